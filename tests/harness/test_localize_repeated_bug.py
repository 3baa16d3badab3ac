"""A bug repeated in every block (a tanh GELU in each feed-forward of the port's own): the blocks
after the first are handed the first one's error, and, re-run on their twins' inputs, still make
one. Each call inside them only passes on what it receives, so the error grows at the step between
two of them that the port's code takes otherwise than the reference (its GELU between the two
linears): that step's module is named, in every block, never the block around it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from helpers import compare_port
from port_toys import randomized

D = 8


class Block(nn.Module):
    """The original: its feed-forward's layers are its own children."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.fc1, self.act, self.fc2 = nn.LayerNorm(D), nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class Mlp(nn.Module):
    """The port's feed-forward, which the original does not have, applying its GELU itself."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.approximate = nn.Linear(D, 4 * D), nn.Linear(4 * D, D), "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class PortBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.mlp = nn.LayerNorm(D), Mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class Net(nn.Module):
    def __init__(self, block: type) -> None:
        super().__init__()
        self.embed, self.blocks, self.head = nn.Linear(4, D), nn.Sequential(block(), block(), block()), nn.Linear(D, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(x)))


def _tanh_everywhere(port: nn.Module) -> None:
    for block in port.blocks:
        block.mlp.approximate = "tanh"


def _report():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    return compare_port(Net(PortBlock).double().eval(), randomized(Net(Block), seed=3), x, _tanh_everywhere)


def test_a_bug_in_every_feed_forward_names_each_feed_forward_not_the_later_blocks():
    report = _report()
    expected = ["blocks.0.mlp", "blocks.1.mlp", "blocks.2.mlp"]
    assert report.introduced == expected, \
        f"introduced {report.introduced}, expected {expected}: the later blocks' feed-forwards apply the same " \
        f"tanh GELU\n{report.format()}"
