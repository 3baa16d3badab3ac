"""A window attention port whose module takes and returns the map's tokens ``(B, H*W, C)`` and
shifts, partitions and reverses the windows itself, against a reference whose attention module sees
the windows ``(B*nW, ws*ws, C)``: the two modules' values agree through a window partition of the
token grid (after the roll), so a faithful port passes and its map verifies."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import compare_port

C, WS, SHIFT, H, W = 8, 2, 1, 4, 6


def _partition(x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B*nW, ws*ws, C)
    b = x.shape[0]
    return x.reshape(b, H // WS, WS, W // WS, WS, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, WS * WS, C)


def _reverse(x: torch.Tensor) -> torch.Tensor:  # (B*nW, ws*ws, C) -> (B, H, W, C)
    b = x.shape[0] // (H // WS * W // WS)
    return x.reshape(b, H // WS, W // WS, WS, WS, C).permute(0, 1, 3, 2, 4, 5).reshape(b, H, W, C)


class _WindowAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(windows).chunk(3, -1)
        return self.proj(F.scaled_dot_product_attention(q, k, v))


class _Reference(nn.Module):
    """Tokens -> map -> roll -> windows -> attention -> map -> roll back -> tokens, the attention on windows."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = _WindowAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H*W, C)
        shifted = torch.roll(x.reshape(-1, H, W, C), (-SHIFT, -SHIFT), (1, 2))
        out = _reverse(self.attn(_partition(shifted)))
        return x + torch.roll(out, (SHIFT, SHIFT), (1, 2)).reshape(x.shape)


class _TokenAttention(_WindowAttention):
    """The same attention as one module on the tokens: it shifts and partitions the map itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        windows = _partition(torch.roll(x.reshape(-1, H, W, C), (-SHIFT, -SHIFT), (1, 2)))
        return torch.roll(_reverse(super().forward(windows)), (SHIFT, SHIFT), (1, 2)).reshape(x.shape)


class _Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = _TokenAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attention(x)


def _report(change=lambda port: None) -> harness.Report:
    reference = _Reference().double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    x = torch.randn(2, H * W, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return compare_port(_Port().double().eval(), reference, x, change)


def test_an_attention_on_the_tokens_against_one_on_shifted_windows_passes() -> None:
    report = _report()
    assert report.passed, report.format()


def test_an_error_in_an_attention_on_the_tokens_is_blamed_on_it() -> None:
    report = _report(lambda port: port.attention.proj.weight[1, 2].add_(0.01))
    assert not report.passed and report.culprit in ("attention", "attention.proj"), report.format()
