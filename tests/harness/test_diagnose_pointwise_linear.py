"""A pointwise (1x1) conv ported as ``nn.Linear`` on the channels-last map: the linear in the conv's
place is the port's design; a square weight stored transposed is the finding, as for a plain
linear."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import findings_text

C = 8


class _Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(C, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pw(x))


class _ChannelsLast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pw(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


def test_a_square_pointwise_weight_stored_transposed_is_named_transposed():
    g = torch.Generator().manual_seed(0)
    candidate, reference = _ChannelsLast().double().eval(), _Conv().double().eval()
    harness.randomize_(reference, g)
    x = torch.randn(1, C, 4, 4, generator=g, dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    with torch.no_grad():
        candidate.pw.weight.copy_(candidate.pw.weight.t().clone())
    report = harness.compare(candidate, reference, x, weights=weights)
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert "pw: linear operand weight holds the reference's weight with its dims permuted (1, 0) (stored " \
           "transposed?)" in why, f"expected the weight named stored transposed, got:\n{findings_text(report.diagnosis)}"
