"""A port whose blocks hold a projection shortcut they never call (a dropped residual) against a
reference computing it last, just before the head: the shortcut tensors the candidate never reads
sit after every tensor it reads, and pairing them in order with the reference's read shortcut
would cross the head and pair a norm's weight with a running mean. A tensor never read pairs only
with one never read; the shortcut then takes its twin unit's tensors role for role."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness
from port_toys import conv_bn, randomized

WIDTHS = ((4, 8), (8, 8), (8, 16), (16, 16))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.main = nn.Sequential(conv_bn(cin, cout, 3), nn.ReLU(), conv_bn(cout, cout, 3))
        self.skip = conv_bn(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.main(x))  # the shortcut is never added


class _ReferenceBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.conv2, self.downsample = conv_bn(cin, cout, 3), conv_bn(cout, cout, 3), conv_bn(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.downsample(x))


class _Net(nn.Module):
    def __init__(self, block: type[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(block(cin, cout) for cin, cout in WIDTHS))
        self.head = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def _maps() -> torch.Tensor:
    return torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture(scope="module")
def weights():
    return harness.map_weights(randomized(_Net(_Block), 1), randomized(_Net(_ReferenceBlock), 2), _maps())


def test_a_shortcut_never_called_takes_its_twin_tensors_role_for_role(weights):
    sources = {e.candidate: e.reference for e in weights.entries}
    wrong = {f"blocks.{b}.skip.{unit}.{leaf}": sources.get(f"blocks.{b}.skip.{unit}.{leaf}")
             for b in range(len(WIDTHS)) for unit, leaf in (("0", "weight"), ("1", "weight"), ("1", "bias"),
                                                            ("1", "running_mean"), ("1", "running_var"))
             if sources.get(f"blocks.{b}.skip.{unit}.{leaf}") != (f"blocks.{b}.downsample.{unit}.{leaf}",)}
    assert not wrong, f"each unread shortcut tensor should take the same role in its block's downsample; got {wrong}"

