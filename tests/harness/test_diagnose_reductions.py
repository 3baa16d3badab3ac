"""A mean over two axes written as two means (``x.mean(2, keepdim=True).mean(3, keepdim=True)``)
is one mean over both: the spelling is no finding, and the bug next to it is named. A division by a
constant reads as what it divides by."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import compare_port, findings_text


class _GlobalContext(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.proj = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.bug = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        context = y + torch.relu(y.mean((2, 3), keepdim=True))
        return self.proj(context)


class _TwoMeans(_GlobalContext):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        context = y + torch.relu(y.mean(2, keepdim=True).mean(3, keepdim=True))
        if self.bug:
            context = context / 3
        return self.proj(context)


def test_a_division_next_to_a_mean_written_as_two_means_is_the_finding() -> None:
    reference = _GlobalContext().double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = compare_port(_TwoMeans().double().eval(), reference, x, lambda port: setattr(port, "bug", True))
    assert report.diagnosis[0]["text"] == (
        "<root>: extra div by 3 in the candidate between add and conv2d; the reference has none"), \
        findings_text(report.diagnosis)


def test_a_mean_written_as_two_means_passes() -> None:
    reference = _GlobalContext().double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert compare_port(_TwoMeans().double().eval(), reference, x).passed
