"""Summary mode keeps the final outputs whole, so at float32 the noise floor still judges them: a
weight change far above the reference's rounding but inside atol/rtol fails there as it does in
full mode, and a clean copy passes."""

from __future__ import annotations

import copy

import torch
from torch import nn

import harness


def _models() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)).eval()
    return copy.deepcopy(reference), reference, torch.randn(4, 16)


def test_a_weight_change_inside_the_tolerances_fails_summary_mode_at_float32():
    candidate, reference, x = _models()
    with torch.no_grad():
        candidate[0].weight.mul_(1 + 2e-5)  # ~100x float32's rounding, under rtol 1e-4
    report = harness.compare(candidate, reference, x, mode="summary")
    assert not report.passed, report.format()


def test_the_same_change_passes_summary_mode_by_absolute_tolerances_alone():
    candidate, reference, x = _models()
    with torch.no_grad():
        candidate[0].weight.mul_(1 + 2e-5)
    report = harness.compare(candidate, reference, x, mode="summary", noise_floor=False)
    assert report.passed, f"the change is meant to hide inside atol/rtol:\n{report.format()}"


class _SplitLinear(nn.Linear):
    """A linear layer summing its two input halves apart: the same function, rounded otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.in_features // 2
        return x[:, :half] @ self.weight[:, :half].t() + x[:, half:] @ self.weight[:, half:].t() + self.bias


def test_a_port_rounding_otherwise_passes_summary_mode_at_float32_and_the_report_says_what_was_judged():
    candidate, reference, x = _models()
    candidate[0] = _SplitLinear(16, 32)
    candidate.load_state_dict(reference.state_dict())
    assert not torch.equal(candidate(x), reference(x)), "the port is meant to round otherwise"
    report = harness.compare(candidate, reference, x, mode="summary")
    assert report.passed and any("only they are judged against the reference's rounding" in n for n in report.notes), \
        report.format()
