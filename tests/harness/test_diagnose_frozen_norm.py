"""A port's batch norm against a frozen one (torchvision's ``FrozenBatchNorm2d``: no ``F.batch_norm``
call, a scale ``weight * rsqrt(var + eps)`` and a shift ``bias - mean * scale`` computed from its
buffers, then ``x * scale + shift``): the two are one operation, so a setting that differs is named
as the setting; and a network's operations that do have their operands are never said to lack one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness
from helpers import findings_text

FrozenBatchNorm2d = pytest.importorskip("torchvision.ops.misc").FrozenBatchNorm2d


def _frozen_statistics_(norm: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        n = norm.weight.numel()
        norm.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
        norm.bias.copy_(0.2 * torch.randn(n, generator=g))
        norm.running_mean.copy_(0.2 * torch.randn(n, generator=g))
        norm.running_var.copy_(torch.rand(n, generator=g) * 0.01 + 0.001)


def test_norm_eps_change_against_a_frozen_batch_norm_blames_the_eps():
    reference = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False), FrozenBatchNorm2d(8), nn.ReLU())
    reference = reference.double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    _frozen_statistics_(reference[1])
    candidate = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()).double().eval()
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    candidate[1].eps = 1e-3
    report = harness.compare(candidate, reference, x, weights=weights)
    why = report.diagnosis[0]["text"] if report.diagnosis else "(no finding)"
    assert report.culprit == "1" and "batch_norm eps 0.001 in the candidate, 1e-05 in the reference" in why, \
        f"culprit {report.culprit}; the eps is not named first:\n{findings_text(report.diagnosis)}"


class _Block(nn.Module):
    """A strided residual block: a 3x3 convolution and a 1x1 shortcut reading one input."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.down = nn.Conv2d(c, c, 3, 2, 1, bias=False), nn.Conv2d(c, c, 1, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv1(x)) + self.down(x)


class _Reference(nn.Module):
    """A block and a lateral 1x1 convolution on the block's input, of half its channels: its output
    has as many values as the block's two convolutions together."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body, self.lateral = _Block(c), nn.Conv2d(c, c // 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.body(x), self.lateral(x)


class _Port(nn.Module):
    """The lateral written in the root, as a matrix and a bias; ``drop_bias`` leaves the bias out."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.trunk, self.drop_bias = _Block(c), False
        self.lat_w, self.lat_b = nn.Parameter(torch.zeros(c // 2, c)), nn.Parameter(torch.zeros(c // 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        body = self.trunk(x)
        y = torch.einsum("bchw,oc->bohw", x, self.lat_w)
        return body, y if self.drop_bias else y + self.lat_b[:, None, None]


def test_a_block_conv_and_its_shortcut_are_never_taken_for_one_fused_op_missing_its_weight():
    reference = _Reference(8).double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    candidate = _Port(8).double().eval()
    x = torch.randn(1, 8, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    candidate.drop_bias = True
    report = harness.compare(candidate, reference, x, weights=weights)
    texts = findings_text(report.diagnosis)
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert "bias missing in the candidate" in why and "lateral.bias" in why and "weight missing" not in texts, \
        f"expected the lateral's bias named missing, no convolution's weight:\n{texts}"
