"""A block whose own code leaves out a step after a branch ending with a layout module
(torchvision's ConvNeXt ``CNBlock``: its ``Sequential`` ends with a ``Permute`` back to NCHW, the
layer scale is applied in the block's code) against one that permutes and scales in its code
(timm's ``ConvNeXtBlock``). The ``Permute`` has no twin, and what it returns is no value the
reference computes once the scale is gone; but it only rearranges its input as the reference's
values are rearranged, so its code is right: the block, whose code dropped the scale, is named.
A permute that arranges the map otherwise than any reference value is still named."""

from __future__ import annotations

import types

import torch
from torch import nn
from torchvision.models.convnext import CNBlock

import harness
from helpers import compare_port
from port_toys import Permute

D = 8


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _CodeBlock(nn.Module):
    """timm's layout: permutes in code, the layer scale ``gamma`` applied after the permute back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_dw, self.norm, self.mlp = nn.Conv2d(D, D, 7, padding=3, groups=D), nn.LayerNorm(D, eps=1e-6), _Mlp()
        self.gamma = nn.Parameter(torch.ones(D))
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return self.drop_path(y.mul(self.gamma.reshape(1, -1, 1, 1))) + x


class _Net(nn.Module):
    def __init__(self, block: type | None = None) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, D, 3, padding=1)
        self.blocks = nn.Sequential(*((block or (lambda: CNBlock(D, 1e-6, 0.0)))() for _ in range(2)))
        self.head = nn.Linear(D, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def _compared(change, width: int = 7) -> harness.ParityReport:
    reference = _Net(_CodeBlock).double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    image = torch.randn(2, 3, 6, width, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return compare_port(_Net().double().eval(), reference, image, change)


def _without_scale(port: nn.Module) -> None:
    block = port.blocks[1]
    block.forward = types.MethodType(lambda self, x: self.stochastic_depth(self.block(x)) + x, block)


def test_a_layer_scale_left_out_by_the_block_blames_the_block_not_its_permute() -> None:
    report = _compared(_without_scale)
    assert report.culprit == "blocks.1", \
        f"culprit {report.culprit}: the block's own code left out the scale; its Permute only rearranges what it was " \
        f"handed, as the reference does\n{report.format()}"


def test_a_permute_swapping_height_and_width_is_named() -> None:
    report = _compared(lambda port: port.blocks[1].block.__setitem__(6, Permute(0, 3, 2, 1)), width=6)
    assert report.culprit == "blocks.1.block.6", \
        f"culprit {report.culprit}: the permute arranging the map as no reference value is its error\n{report.format()}"
