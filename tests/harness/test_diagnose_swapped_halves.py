"""A SwiGLU written with separate gate and up projections whose port applies the activation to the
up projection: the activation reads what the reference's up projection gives where the
reference's reads the gate's, which names the two."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import findings_text

C, HIDDEN = 8, 16


class _SwiGLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1_g, self.fc1_x, self.fc2 = nn.Linear(C, HIDDEN), nn.Linear(C, HIDDEN), nn.Linear(HIDDEN, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc1_g(x), self.fc1_x(x)  # both projections before the activation, as timm's
        return self.fc2(F.silu(gate) * up)


class _Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(C, HIDDEN), nn.Linear(C, HIDDEN), nn.Linear(HIDDEN, C)
        self.swapped = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swapped:
            return self.down(F.silu(self.up(x)) * self.gate(x))
        return self.down(F.silu(self.gate(x)) * self.up(x))


def test_an_activation_on_the_up_projection_names_both_projections():
    g = torch.Generator().manual_seed(0)
    candidate, reference = _Port().double().eval(), _SwiGLU().double().eval()
    harness.randomize_(reference, g)
    x = torch.randn(2, 3, C, generator=g, dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    candidate.swapped = True
    report = harness.compare(candidate, reference, x, weights=weights)
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert "silu reads what the reference's fc1_x (linear) gives, where the reference's silu reads what its " \
           "fc1_g (linear) gives" in why, f"expected the gate and up halves named, got:\n{findings_text(report.diagnosis)}"
