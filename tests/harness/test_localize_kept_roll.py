"""Shifted windows: the port's attention takes the map, rolls it, splits it into windows, mixes the
tokens of each window, merges and rolls back; the original's block does the rolls and the window
split itself around an attention that sees windows only. The twins' inputs are related by "window
partition after a roll", and their outputs must be too: a port that forgets the roll back agrees
with the original's windows only through another roll, and that is not accepted. The attention is
named at float64 and float32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness

C, WS, SHIFT = 8, 4, 2


def partition(x: torch.Tensor) -> torch.Tensor:
    b, h, w, c = x.shape                                                           # (B, H, W, C)
    x = x.reshape(b, h // WS, WS, w // WS, WS, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, WS * WS, c)                                               # (B * nW, WS * WS, C)


def merge(windows: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    x = windows.reshape(b, h // WS, w // WS, WS, WS, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


class WindowMix(nn.Module):
    """Token mixing inside each window: a learned (tokens x tokens) matrix, then a projection."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.randn(WS * WS, WS * WS) / WS)
        self.proj = nn.Linear(C, C)

    def forward(self, windows):
        return self.proj(self.mix @ windows)


class Block(nn.Module):
    """The original: the block shifts and splits, its attention sees windows."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(C), WindowMix()

    def forward(self, x):
        b, h, w, _ = x.shape
        y = partition(torch.roll(self.norm(x), (-SHIFT, -SHIFT), (1, 2)))
        return x + torch.roll(merge(self.attn(y), b, h, w), (SHIFT, SHIFT), (1, 2))


class ShiftedMix(nn.Module):
    """The port: the attention shifts, splits, merges and shifts back itself."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.zeros(WS * WS, WS * WS))
        self.proj = nn.Linear(C, C)
        self.roll_back = True

    def forward(self, x):
        b, h, w, _ = x.shape
        y = merge(self.proj(self.mix @ partition(torch.roll(x, (-SHIFT, -SHIFT), (1, 2)))), b, h, w)
        return torch.roll(y, (SHIFT, SHIFT), (1, 2)) if self.roll_back else y


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln, self.attention = nn.LayerNorm(C), ShiftedMix()

    def forward(self, x):
        return x + self.attention(self.ln(x))


def compared(dtype: torch.dtype, change=lambda port: None):
    reference = nn.Sequential(Block(), Block())
    harness.randomize_(reference, torch.Generator().manual_seed(1))
    x = torch.randn(2, 8, 8, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    port, reference = nn.Sequential(Layer(), Layer()).double().eval(), reference.double().eval()
    weights = harness.map_weights(port, reference, x)
    weights.transfer(reference, port)
    change(port)
    return harness.compare(port.to(dtype), reference.to(dtype), x.to(dtype), weights=weights)


def test_the_port_rolling_back_passes():
    report = compared(torch.float64)
    assert report.passed, report.format()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_an_attention_that_forgets_to_roll_back_is_named(dtype):
    report = compared(dtype, lambda port: setattr(port[1].attention, "roll_back", False))
    assert not report.passed and report.culprit == "1.attention", report.format()
