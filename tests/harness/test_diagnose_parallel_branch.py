"""An op replaced on one branch (a context vector taken as a mean where the reference sums), then
an op on another branch that agrees (the values' activation), then the op joining the two: the
agreeing op on the other branch does not clear the replaced op, which is what the join receives
differently."""

import torch
from torch import nn
from torch.nn import functional as F

from harness.diagnose import diagnose_modules
from port_toys import randomized
from helpers import findings_text


class LinearAttention(nn.Module):
    """A separable linear attention: ``out(relu(v) * sum_n(k * softmax_n(q)))``, the context
    reduced by ``reduce`` (``"sum"``, or ``"mean"``)."""

    def __init__(self, reduce: str = "sum") -> None:
        super().__init__()
        self.qkv, self.out, self.reduce = nn.Conv2d(8, 1 + 2 * 8, 1), nn.Conv2d(8, 8, 1), reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = torch.split(self.qkv(x), [1, 8, 8], dim=1)
        scores = k * F.softmax(q, dim=-1)
        context = scores.sum(-1, keepdim=True) if self.reduce == "sum" else scores.mean(-1, keepdim=True)
        return self.out(F.relu(v) * context.expand_as(v))


def _findings(reduce: str) -> list[dict]:
    reference = randomized(LinearAttention(), seed=4)
    candidate = LinearAttention(reduce).double().eval()
    candidate.load_state_dict(reference.state_dict())
    x = torch.randn(2, 8, 4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return [f for f in diagnose_modules(candidate, reference, (x,), {}) if f["kind"] != "attribute"]


def test_mean_in_place_of_sum_before_an_agreeing_branch_is_named() -> None:
    findings = _findings("mean")
    assert findings and findings[0]["kind"] == "op" \
        and "applies mean where the reference applies sum" in findings[0]["text"], \
        f"expected the mean named in the place of the reference's sum first, got:\n{findings_text(findings)}"


def test_join_after_a_replaced_branch_is_not_said_to_receive_rearranged_inputs() -> None:
    findings = _findings("mean")
    assert not any("every operation before it agrees" in f["text"] for f in findings), \
        f"expected no claim that every operation before the join agrees, got:\n{findings_text(findings)}"


def test_linear_attention_port_has_no_finding() -> None:
    findings = _findings("sum")
    assert findings == [], f"expected no finding for a right port, got:\n{findings_text(findings)}"
