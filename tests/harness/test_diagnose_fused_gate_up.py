"""A SwiGLU whose gate and up projections are one fused linear, chunked, against one with two linears
(the gate's activation computed between them): the two linears are read as the fused one, so a bug
after the split is named for what it is (halves swapped, another activation), not as a linear of
another shape giving another result."""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import findings_text

D, HIDDEN = 8, 16


class _TwoLinears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(D, HIDDEN), nn.Linear(D, HIDDEN), nn.Linear(HIDDEN, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _FusedGateUp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w12, self.w3 = nn.Linear(D, 2 * HIDDEN), nn.Linear(HIDDEN, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w12(x).chunk(2, -1)
        return self.w3(F.silu(gate) * up)


def _halves_swapped(self, x: torch.Tensor) -> torch.Tensor:
    gate, up = self.w12(x).chunk(2, -1)
    return self.w3(F.silu(up) * gate)


def _gelu_gate(self, x: torch.Tensor) -> torch.Tensor:
    gate, up = self.w12(x).chunk(2, -1)
    return self.w3(F.gelu(gate) * up)


def _why(forward) -> tuple[str, str]:
    torch.manual_seed(0)
    x = torch.randn(2, 5, D, dtype=torch.float64)
    candidate, reference = _FusedGateUp().double().eval(), _TwoLinears().double().eval()
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    candidate.forward = types.MethodType(forward, candidate)
    report = harness.compare(candidate, reference, x, weights=weights)
    return (report.diagnosis[0]["text"] if report.diagnosis else ""), findings_text(report.diagnosis)


def test_gate_and_up_halves_swapped_after_a_fused_projection_are_said_swapped():
    why, all_ = _why(_halves_swapped)
    assert "silu receives part 2 of the 2 the candidate's chunk makes, where the reference passes the values of " \
           "part 1: parts taken in another order" in why, all_


def test_another_gate_activation_after_a_fused_projection_is_named():
    why, all_ = _why(_gelu_gate)
    assert "the candidate applies gelu where the reference applies silu" in why, all_
