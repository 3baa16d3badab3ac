"""A float32 error made by code without a twin (a tanh GELU, in the port's own code between two
paired linears) whose
effect, scaled by a layer scale and added to a residual, is as small as the block's own rounding:
the linear after it fails beyond its floor with an error it received, while the block around it
is within its floor. The block is then searched as failing, and re-run on the reference's inputs it
fails against the floor of its own computation: the error is localized to it, and the why names
the activation."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import harness
from helpers import transferred

D = 48


class Block(nn.Module):
    """The original: a residual branch of 1x1 convolutions on the map, scaled by a small layer scale."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Conv2d(D, 4 * D, 1), nn.GELU(), nn.Conv2d(4 * D, D, 1)
        self.gamma = nn.Parameter(torch.full((D,), 1e-3))

    def forward(self, x):
        return x + self.gamma[:, None, None] * self.fc2(self.act(self.fc1(x)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block, self.head = nn.Conv2d(3, D, 1), Block(), nn.Conv2d(D, D, 1)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


class PortBlock(nn.Module):
    """The port: the branch as linears on channels-last tokens; its activation is its own code."""

    def __init__(self) -> None:
        super().__init__()
        self.pw1, self.pw2 = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)
        self.approximate = "none"
        self.layer_scale = nn.Parameter(torch.ones(D))

    def forward(self, x):
        h = self.pw2(F.gelu(self.pw1(x.permute(0, 2, 3, 1)), approximate=self.approximate))
        return x + (self.layer_scale * h).permute(0, 3, 1, 2)


class Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj, self.layer, self.out = nn.Conv2d(3, D, 1), PortBlock(), nn.Conv2d(D, D, 1)

    def forward(self, x):
        return self.out(self.layer(self.proj(x)))


def _ported():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    original = Net().double().eval()
    with torch.no_grad():  # small pre-activations: the tanh GELU is within float32's atol of the exact one
        original.block.fc1.weight.mul_(0.3), original.block.fc1.bias.mul_(0.3)
    port, original, weights = transferred(Port().double().eval(), original, x)
    port.layer.approximate = "tanh"
    return port.float(), original.float(), weights, x.float()


def test_tanh_gelu_diluted_by_a_layer_scale_is_localized_at_float32():
    port, original, weights, x = _ported()
    report = harness.compare(port, original, x, weights=weights)
    assert (report.passed, report.culprit) == (False, "layer"), \
        f"passed {report.passed}, culprit {report.culprit}; expected layer\n{report.format()}"


def test_tanh_gelu_diluted_by_a_layer_scale_is_named_in_the_why_at_float32():
    port, original, weights, x = _ported()
    report = harness.compare(port, original, x, weights=weights)
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert "gelu approximate 'tanh'" in why, f"expected the why to name the tanh GELU, got {why or '(no why)'}"


def test_a_block_searched_as_failing_is_named_in_a_note():
    port, original, weights, x = _ported()
    report = harness.compare(port, original, x, weights=weights)
    assert any("layer#0 is within its rounding floor but holds layer.pw2#0" in n for n in report.notes), report.notes


def test_the_same_block_ported_right_passes_at_float32():
    port, original, weights, x = _ported()
    port.layer.approximate = "none"
    report = harness.compare(port, original, x, weights=weights)
    assert report.passed, f"a right port should pass\n{report.format()}"
