"""A chain of scalings by numbers is one scaling by their product: ``x * 2 * pi`` and
``x * (2 * pi)`` compute the same, so a port folding its constants otherwise differs nowhere, and
the diagnosis reads past it to what does differ."""

from __future__ import annotations

import math

import torch
from torch import nn

import harness
from helpers import findings_text


class _Angles(nn.Module):
    """Normalized coordinates scaled to angles, sine and cosine joined."""

    def __init__(self, *, folded: bool, swapped: bool = False) -> None:
        super().__init__()
        self.folded, self.swapped = folded, swapped
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x / (x[:, -1:] + 1e-6)
        y = y * (2 * math.pi) if self.folded else y * 2 * math.pi
        parts = [y.sin(), y.cos()]
        return self.fc(torch.cat(parts[::-1] if self.swapped else parts, -1))


class _Net(nn.Module):
    def __init__(self, **kw: bool) -> None:
        super().__init__()
        self.angles = _Angles(**kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.angles(x)


def _report(*, swapped: bool) -> harness.Report:
    torch.manual_seed(0)
    reference, candidate = _Net(folded=True).double().eval(), _Net(folded=False, swapped=swapped).double().eval()
    x = torch.rand(2, 4, 3, dtype=torch.float64) + 0.5
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    return harness.compare(candidate, reference, x, weights=weights)


def test_constants_folded_otherwise_are_no_finding_before_a_swapped_join():
    report = _report(swapped=True)
    all_ = findings_text(report.diagnosis)
    assert report.diagnosis and "mul" not in report.diagnosis[0]["text"] \
        and "order" in report.diagnosis[0]["text"], f"expected the cat order named first, got:\n{all_}"
