"""Ops pair through the parameters they read before their names: a hand-written port spells ops
otherwise (a 1x1 conv for a linear, a batch norm folded into a scale and a shift), and by name
alone its ``mul`` by a norm's scale would pair with a layer scale's ``mul`` further on, and every
op after it with the wrong twin. So the bug itself is named: an activation's flavour, a residual
left out, an activation moved, two operands passed in each other's place."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import harness
from harness.diagnose import record_ops
from helpers import compare_port, findings_text, trained_statistics_

C = 8


# -- a ConvNeXt block: the reference channels-last with nn modules, the port NCHW by hand ---------
class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dwconv, self.norm = nn.Conv2d(C, C, 3, padding=1, groups=C), nn.LayerNorm(C)
        self.fc1, self.fc2 = nn.Linear(C, 2 * C), nn.Linear(2 * C, C)
        self.gamma = nn.Parameter(torch.ones(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.fc2(F.gelu(self.fc1(y))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class _ChannelNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.g, self.b = nn.Parameter(torch.ones(C, 1, 1)), nn.Parameter(torch.zeros(C, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        var = ((x - u) ** 2).mean(1, keepdim=True)
        return (x - u) / torch.sqrt(var + 1e-5) * self.g + self.b


class _PortedBlock(nn.Module):
    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.dw, self.ln = nn.Conv2d(C, C, 3, padding=1, groups=C), _ChannelNorm()
        self.pw1, self.pw2 = nn.Conv2d(C, 2 * C, 1), nn.Conv2d(2 * C, C, 1)
        self.scale = nn.Parameter(torch.ones(C, 1, 1))
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw2(F.gelu(self.pw1(self.ln(self.dw(x))), approximate=self.approximate))
        return x + y * self.scale


def _port_report(candidate: nn.Module, reference: nn.Module, x: torch.Tensor,
                 change: Callable[[nn.Module], object] = lambda model: None) -> harness.Report:
    harness.randomize_(reference.double().eval(), torch.Generator().manual_seed(0))
    return compare_port(candidate.double().eval(), reference, x, change)


def _map() -> torch.Tensor:
    return torch.randn(2, C, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_a_hand_written_convnext_block_passes() -> None:
    report = _port_report(_PortedBlock(), _Block(), _map())
    assert report.passed, report.format()


def test_a_tanh_gelu_after_a_hand_written_channel_norm_is_named_not_the_norms_scale() -> None:
    report = _port_report(_PortedBlock(approximate="tanh"), _Block(), _map())
    assert report.diagnosis[0]["kind"] == "argument" and report.diagnosis[0]["argument"] == "approximate", \
        findings_text(report.diagnosis)


# -- a ConvMixer layer: the reference's BatchNorm modules, the port's batch norm folded by hand ------
class _Mixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dw, self.bn1 = nn.Conv2d(C, C, 3, padding=1, groups=C), nn.BatchNorm2d(C)
        self.pw, self.bn2 = nn.Conv2d(C, C, 1), nn.BatchNorm2d(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.bn1(F.gelu(self.dw(x)))
        return self.bn2(F.gelu(self.pw(x)))


class _FoldedNorm(nn.Module):
    """A batch norm as a scale and a shift: ``x * w / sqrt(var + eps) + (b - mean * w / sqrt(var + eps))``."""

    def __init__(self) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(torch.ones(C)), nn.Parameter(torch.zeros(C))
        self.register_buffer("mean", torch.zeros(C))
        self.register_buffer("var", torch.ones(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inv = self.w / torch.sqrt(self.var + 1e-5)
        return x * inv[:, None, None] + (self.b - self.mean * inv)[:, None, None]


class _PortedMixer(nn.Module):
    """``bug``: None, ``"no residual"``, ``"norm first"`` (the norm before the GELU), ``"stats swapped"``
    (``F.batch_norm`` given the variance as the mean and the mean as the variance)."""

    def __init__(self, bug: str | None = None) -> None:
        super().__init__()
        self.depthwise, self.norm1 = nn.Conv2d(C, C, 3, padding=1, groups=C), _FoldedNorm()
        self.pointwise, self.norm2 = nn.Conv2d(C, C, 1), _FoldedNorm()
        self.bug = bug

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(x)
        y = F.gelu(self.norm1(y)) if self.bug == "norm first" else self.norm1(F.gelu(y))
        x = y if self.bug == "no residual" else x + y
        y = F.gelu(self.pointwise(x))
        if self.bug == "stats swapped":
            n = self.norm2
            return F.batch_norm(y, n.var, n.mean, n.w, n.b, False, 0.0, 1e-5)
        return self.norm2(y)


def _mixer_report(bug: str | None) -> harness.Report:
    reference = _Mixer().double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    # the map is found on the correct code, then the code changes: the weights stay where they belong
    return compare_port(_PortedMixer().double().eval(), trained_statistics_(reference), _map(), lambda port: setattr(port, "bug", bug))


def test_a_mixer_with_folded_batch_norms_passes() -> None:
    report = _mixer_report(None)
    assert report.passed, report.format()


def test_a_residual_left_out_after_a_folded_batch_norm_is_named_missing() -> None:
    first = _mixer_report("no residual").diagnosis[0]
    assert (first["kind"], first["op"]) == ("missing_op", "add"), first["text"]


def test_an_activation_moved_after_the_norm_is_one_moved_op() -> None:
    first = _mixer_report("norm first").diagnosis[0]
    assert first["op"] == "gelu" and "in another place" in first["text"], first["text"]


def test_mean_and_variance_passed_in_each_others_place_are_named_swapped() -> None:
    report = _mixer_report("stats swapped")
    assert "operands swapped?" in report.diagnosis[0]["text"], findings_text(report.diagnosis)


def test_a_same_padded_conv_records_the_numbers_it_pads_by() -> None:
    conv = nn.Conv2d(C, C, 5, padding="same", dilation=2).double()
    _, ops, _ = record_ops(conv, (_map(),), {})
    assert ops[0].args["padding"] == (4, 4), ops[0].args
