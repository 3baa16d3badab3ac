"""A depthwise conv paired, by its weights, with the original's wrapper that reshapes tokens into a
map for its own conv: when the port's code swaps the map's height and width (a non-square grid),
the conv is re-run on the map the wrapper's own conv received, gives that conv's output, and is
cleared; the feed-forward whose reshape swapped the axes is named."""

from __future__ import annotations

import torch
from torch import nn

from helpers import compare_port

C, H, W = 8, 2, 3  # a non-square grid: swapping its axes gives another map of another shape


class DWConv(nn.Module):
    """The original's wrapper: tokens in, its conv on the (H, W) map, tokens out."""

    def __init__(self) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(C, C, 3, 1, 1, groups=C)

    def forward(self, x, height, width):
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, height, width)).flatten(2).transpose(1, 2)


class Original(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.dwconv, self.fc2 = nn.Linear(3, C), DWConv(), nn.Linear(C, 2)

    def forward(self, x):
        return self.fc2(torch.tanh(self.dwconv(self.fc1(x), H, W)))


class FFN(nn.Module):
    """The port: the conv a direct child, the reshape in the feed-forward's own code."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.dw = nn.Linear(3, C), nn.Conv2d(C, C, 3, 1, 1, groups=C)
        self.grid = (H, W)

    def forward(self, x):
        x = self.fc1(x)
        b, n, c = x.shape
        return torch.tanh(self.dw(x.transpose(1, 2).reshape(b, c, *self.grid)).flatten(2).transpose(1, 2))


class Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ffn, self.head = FFN(), nn.Linear(C, 2)

    def forward(self, x):
        return self.head(self.ffn(x))


def test_conv_given_a_map_with_height_and_width_swapped_blames_the_feed_forward():
    torch.manual_seed(0)
    x = torch.randn(2, H * W, 3, dtype=torch.float64)
    report = compare_port(Port().double().eval(), Original().double().eval(), x,
                          lambda port: setattr(port.ffn, "grid", (W, H)))
    assert not report.passed
    assert report.culprit == "ffn", \
        f"culprit {report.culprit}, expected ffn (its reshape swapped the map's axes)\n{report.format()}"
