"""A port compared at float32 is diagnosed on float64 copies, where what float32 rounded off in the
port's own weights shows (a batch norm folded into a scale and a shift at float32): an operation
that differs from the reference by no more than that rounding computes it, and the bug is named."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import harness
from helpers import findings_text, trained_statistics_


class _Affine(nn.Module):
    """A batch norm folded into a per-channel scale and shift."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.scale, self.shift = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale[:, None, None] + self.shift[:, None, None]


class _Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hard = False
        self.w1, self.bn = nn.Parameter(torch.zeros(16, 8, 3, 3)), _Affine(16)
        self.w2 = nn.Parameter(torch.zeros(16, 16, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(F.relu(self.bn(F.conv2d(x, self.w1, None, 1, 1))), self.w2)
        return F.hardsigmoid(y) if self.hard else torch.sigmoid(y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_a_folded_norm_off_by_rounding_is_no_finding_the_replaced_activation_is(dtype):
    reference = nn.Sequential(nn.Conv2d(8, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                              nn.Conv2d(16, 16, 1, bias=False), nn.Sigmoid()).double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    trained_statistics_(reference)
    candidate = _Port().double().eval()
    x = torch.randn(1, 8, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    candidate, reference = copy.deepcopy(candidate).to(dtype), copy.deepcopy(reference).to(dtype)
    candidate.hard = True
    report = harness.compare(candidate, reference, x.to(dtype), weights=weights)
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert "applies hardsigmoid where the reference applies sigmoid" in why, \
        f"at {dtype} the replaced activation is not named first:\n{findings_text(report.diagnosis)}"
