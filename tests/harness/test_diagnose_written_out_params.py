"""A run of ops written out in the place of one reference op that no known variant explains: where
a parameter the run reads holds other values, that parameter is the finding, as for a pair of ops."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import findings_text

C = 6


class _WrittenNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(C)), nn.Parameter(torch.zeros(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(-1, keepdim=True)
        v = ((x - u) ** 2).mean(-1, keepdim=True)
        return (x - u) / torch.sqrt(v + 1e-5) * self.weight + self.bias


class _Net(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm, self.fc = norm, nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


def test_a_written_out_layer_norm_with_a_scale_element_off_names_its_scale_only() -> None:
    ref = _Net(nn.LayerNorm(C)).double().eval()
    harness.randomize_(ref, torch.Generator().manual_seed(0))
    cand = _Net(_WrittenNorm()).double().eval()
    x = torch.randn(2, 5, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    weights = harness.map_weights(cand, ref, x)
    weights.transfer(ref, cand)
    with torch.no_grad():
        cand.norm.weight[2] += 1e-3
    findings = harness.compare(cand, ref, x, weights=weights).diagnosis
    assert [f["text"] for f in findings] == [
        "norm: mul operand weight holds other values than the reference's weight (max_abs difference 1.000e-03)"], \
        findings_text(findings)
