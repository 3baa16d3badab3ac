"""The diagnosis re-runs the candidate twin on the reference's recorded inputs, brought into the
candidate's layout where the twins lay an activation out differently (NHWC against NCHW). Run on
its own inputs instead, a float32 port's twin would start from values that differ by rounding
upstream, and its first op would be blamed for a dim it reads in its own layout."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

import harness
from harness.diagnose import _same_axes
from helpers import compare_port, findings_text

C = 12


class _ChannelGate(nn.Module):
    """``x * mean over channels * gamma`` on an NCHW map."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        return x * x.mean(dim=1, keepdim=True) * self.gamma[:, None, None]


class _ChannelLastGate(_ChannelGate):
    """The same on an NHWC map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        return x * x.mean(dim=-1, keepdim=True) * self.gamma


class _NchwNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj, self.gate = nn.Conv2d(C, C, 1), _ChannelGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.proj(x))


class _NhwcNet(nn.Module):
    """The same computation channels-last: the 1x1 conv as a linear, which rounds otherwise in float32."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.gate = nn.Linear(C, C), _ChannelLastGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.proj(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


def _compare(change: Callable[[_ChannelGate], None]) -> harness.Report:
    ref = _NchwNet().float().eval()
    harness.randomize_(ref, torch.Generator().manual_seed(0))
    x = torch.randn(2, C, 5, 7, generator=torch.Generator().manual_seed(1))
    return compare_port(_NhwcNet().float().eval(), ref, x, lambda cand: change(cand.gate))


def test_the_correct_channels_last_port_passes_in_float32() -> None:
    report = _compare(lambda gate: None)
    assert report.passed, report.format()


def test_a_scale_element_off_in_a_channels_last_twin_names_the_scale_in_float32() -> None:
    report = _compare(lambda gate: gate.gamma[5].add_(0.05))
    assert report.culprit == "gate", f"culprit {report.culprit!r}, expected 'gate'"
    assert [f["text"] for f in report.diagnosis] == [
        "gate: mul operand gamma holds other values than the reference's gamma (max_abs difference 5.000e-02)"], \
        findings_text(report.diagnosis)


@pytest.mark.parametrize("c_shape, c_dim, r_shape, r_dim, same", [
    ((2, 5, 7, 12), 3, (2, 12, 5, 7), 1, True),  # the channels, NHWC against NCHW
    ((2, 6, 6, 12), (1, 2), (2, 12, 6, 6), (2, 3), True),  # the spatial axes of a square map
    ((2, 5, 7, 12), 1, (2, 12, 5, 7), 1, False),  # the rows against the channels
    ((2, 12, 5, 12), 3, (2, 12, 12, 5), 1, False),  # as many rows as channels: ambiguous, compared as is
    ((2, 5, 7, 12), 3, (2, 5, 7, 12), 1, False),  # one layout: the dims are compared as they are
    ((2, 12, 35), 2, (2, 12, 5, 7), (2, 3), True),  # the spatial axes, flattened on one side
    ((2, 12, 35), 1, (2, 12, 5, 7), (2, 3), False),  # the channels against the spatial axes
])
def test_dims_name_the_same_axes_only_where_the_sizes_tell_the_axes_apart(c_shape, c_dim, r_shape, r_dim, same) -> None:
    assert _same_axes(c_shape, c_dim, r_shape, r_dim) is same
