"""A layer scale left at its initial ones: that it holds the values of another all-ones tensor of
the reference (a batch norm's fresh running variance) is a coincidence, not a swap; the operand is
said to hold one constant where the reference's scale holds other values."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import findings_text

C = 8


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.bn = nn.Linear(C, C), nn.BatchNorm1d(C)
        self.gamma = nn.Parameter(torch.full((C,), 0.3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.bn(self.fc(x))


def _why() -> tuple[str, str]:
    g = torch.Generator().manual_seed(0)
    candidate, reference = _Block().double().eval(), _Block().double().eval()
    with torch.no_grad():  # randomized, but for the statistics: a fresh batch norm's variance is all ones
        for p in reference.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    x = torch.randn(4, C, generator=g, dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    with torch.no_grad():
        candidate.gamma.fill_(1.0)
    report = harness.compare(candidate, reference, x, weights=weights)
    return (report.diagnosis[0]["text"] if report.diagnosis else ""), findings_text(report.diagnosis)


def test_a_layer_scale_of_ones_is_not_named_as_the_running_variance():
    why, all_ = _why()
    assert "running_var" not in why, f"expected no swap with the running variance, got:\n{all_}"


def test_a_layer_scale_of_ones_is_said_to_hold_a_constant():
    why, all_ = _why()
    assert "mul operand gamma holds the constant 1 everywhere, where the reference's gamma holds other values" \
        in why, f"expected the constant operand named, got:\n{all_}"
