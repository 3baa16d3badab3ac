"""The diagnosis re-runs twins as they are, in their own dtype: it must leave them bit for bit and
write nothing into them, or the guards around the comparison take the harness's restore for the
model writing its own weights."""

import torch
from torch import nn

import harness
from harness.diagnose import record_values

F64 = torch.float64


class ConvHead(nn.Module):
    """A conv without a bias between a first conv and a linear head."""

    def __init__(self, wrapped: bool = False, bias: bool = False) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        conv = nn.Conv2d(4, 4, 3, padding=1, bias=bias)
        self.c = nn.Sequential(conv) if wrapped else conv
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.c(torch.relu(self.a(x))).mean((2, 3)))


def _versions(model: nn.Module) -> dict[str, int]:
    return {name: p._version for name, p in model.named_parameters()}


def test_rerunning_a_module_in_its_own_dtype_moves_no_version_counter():
    model = ConvHead().to(F64).eval()
    before = _versions(model)
    assert record_values(model, (torch.randn(1, 3, 8, 8, dtype=F64),), {}), "the module did not run"
    moved = {k for k, v in _versions(model).items() if v != before[k]}
    assert not moved, f"the re-run wrote into parameters whose values it had not changed: {sorted(moved)}"


def test_a_comparison_that_clears_an_untwinned_call_reports_no_write_by_the_reference():
    torch.manual_seed(0)
    reference, candidate = ConvHead().to(F64).eval(), ConvHead(wrapped=True, bias=True).to(F64).eval()
    x = torch.randn(1, 3, 8, 8, dtype=F64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, x, weights=weights)
    assert not report.passed, "the extra bias should make the comparison fail"
    false = [n for n in report.notes if "in place" in n]
    assert not false, f"a write by the model is reported though no model changed its weights: {false}"
