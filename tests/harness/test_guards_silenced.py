"""A reference fresh from its initialization may hold a branch's last norm weight or layer scale at
zero (timm's ``zero_init_last``): the branch adds zeros, and no error inside it, nor where it joins,
can show. The report names such weights, passing or not; zeros that add rather than scale (a bias)
silence nothing and are not named."""

from __future__ import annotations

import torch
from torch import nn

import harness


class _Bottleneck(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn(self.conv(x)))


def _pair(zeroed: str) -> tuple[nn.Module, nn.Module]:
    reference = nn.Sequential(nn.Conv2d(3, 4, 1), _Bottleneck()).double().eval()
    with torch.no_grad():
        reference.get_parameter(zeroed).zero_()
    candidate = nn.Sequential(nn.Conv2d(3, 4, 1), _Bottleneck()).double().eval()
    candidate.load_state_dict(reference.state_dict())
    return candidate, reference


def _notes(zeroed: str) -> list[str]:
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return harness.compare(*_pair(zeroed), x).notes


def test_a_zero_initialized_last_norm_of_the_reference_is_named_in_the_report():
    notes = _notes("1.bn.weight")
    assert any("1 weight(s) of all zeros that scale a branch (1.bn.weight)" in note for note in notes), notes


def test_a_zero_bias_of_the_reference_is_not_named():
    notes = _notes("1.bn.bias")
    assert not any("all zeros" in note for note in notes), notes
