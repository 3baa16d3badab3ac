"""Models that draw random numbers in forward (Dropout in train mode on both sides) differ by their
draws: the report says so in its ``why:`` line and blames no operation for values that differ at
random, while findings read off the modules' settings stay."""

import torch
from torch import nn
from torch.nn import functional as F

import harness


class Original(nn.Module):
    """A residual MLP whose dropout sits inside ``mlp``."""

    def __init__(self, p: float = 0.25) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Dropout(p), nn.Linear(32, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class Port(nn.Module):
    """The same MLP written flat, the GELU as a function: its dropout has no twin."""

    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(16)
        self.fc1, self.drop, self.fc2 = nn.Linear(16, 32), nn.Dropout(0.25), nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.drop(F.gelu(self.fc1(self.ln(x)))))


def _both_in_train_mode() -> harness.ParityReport:
    torch.manual_seed(0)
    reference, candidate = Original().double().eval(), Port().double().eval()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    reference.train(), candidate.train()
    return harness.compare(candidate, reference, x, weights=weights)


def test_dropout_in_train_mode_on_both_sides_blames_no_operation():
    report = _both_in_train_mode()
    invented = [f["text"] for f in report.diagnosis if f["kind"] != "attribute"]
    assert not report.passed and not invented, f"random differences are explained as a cause: {invented}"


def test_the_why_line_says_both_sides_are_not_deterministic():
    text = _both_in_train_mode().format()
    why = next((line for line in text.splitlines() if line.startswith("why:")), None)
    assert why is not None and "the candidate and the reference are not deterministic" in why, text


def test_the_report_json_names_the_sides_that_are_not_deterministic():
    result = _both_in_train_mode().to_dict()
    assert result["nondeterministic"] == ["candidate", "reference"], result["nondeterministic"]


def test_a_deterministic_failure_names_no_side_as_random():
    torch.manual_seed(0)
    reference = Original().double().eval()
    candidate = Original().double().eval()
    candidate.load_state_dict(reference.state_dict())
    candidate.norm.eps = 1e-3
    report = harness.compare(candidate, reference, torch.randn(2, 5, 16, dtype=torch.float64))
    assert not report.passed and report.nondeterministic == [] and report.diagnosis, report.format()
