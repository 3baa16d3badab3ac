"""Twins of other types given inputs of one shape that each reads in its own layout: a port's
``nn.LayerNorm`` on a channels-last map against an original's channels-first norm on the NCHW map,
where C == H == W. Downstream of an error, values cannot tell the two layouts apart within a
tolerance; the norm, re-run on its twin's input brought into the layout closest to its own, computes
right and received the error: it is no second origin."""

from __future__ import annotations

import torch
from torch import nn

from helpers import compare_port
from port_toys import randomized

C = 6  # the map is 6x6 with 6 channels: NCHW and NHWC have one shape


class ChannelsFirstNorm(nn.LayerNorm):
    """The original's norm over the channels of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Original(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.act = nn.Conv2d(3, C, 3, padding=1), nn.GELU()
        self.norm, self.conv = ChannelsFirstNorm(C), nn.Conv2d(C, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(self.act(self.stem(x))))


class Port(nn.Module):
    """Channels-last between its stem and its last conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.act = nn.Conv2d(3, C, 3, padding=1), nn.GELU()
        self.norm, self.conv = nn.LayerNorm(C), nn.Conv2d(C, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.act(self.stem(x)).permute(0, 2, 3, 1))
        return self.conv(y.permute(0, 3, 1, 2))


def _report(change=lambda port: None):
    torch.manual_seed(0)
    x = torch.randn(1, 3, C, C, dtype=torch.float64)
    return compare_port(Port().double().eval(), randomized(Original(), seed=4), x, change)


def test_a_channels_last_port_of_a_square_map_passes():
    report = _report()
    assert report.passed, f"expected the right port to pass, got:\n{report.format()}"


def test_a_norm_reading_a_square_map_channels_last_downstream_of_an_error_is_no_origin():
    report = _report(lambda port: setattr(port.act, "approximate", "tanh"))
    assert report.introduced == ["act"], \
        f"introduced {report.introduced}, expected ['act'] alone: the norm, given its twin's input in its own " \
        f"layout, computes right\n{report.format()}"
