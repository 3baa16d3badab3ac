"""A module given None where its twin is given a tensor (an attention mask its caller never made)
computes right on the reference's arguments: the caller that left the tensor out is the culprit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness

C, N = 8, 6


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)                 # (B, N, C) each
        scores = q @ k.transpose(-2, -1) * C ** -0.5       # (B, N, N)
        if mask is not None:
            scores = scores + mask
        return self.proj(scores.softmax(-1) @ v)           # (B, N, C)


class _Block(nn.Module):
    """Pre-norm attention whose mask hides the later tokens; ``masked=False`` forgets to make it."""

    def __init__(self, masked: bool) -> None:
        super().__init__()
        self.norm, self.attention, self.masked = nn.LayerNorm(C), _Attention(), masked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.full((N, N), float("-inf"), dtype=x.dtype).triu(1) if self.masked else None
        return x + self.attention(self.norm(x), mask)


class _Model(nn.Module):
    def __init__(self, masked: bool = True) -> None:
        super().__init__()
        self.embed, self.block = nn.Linear(4, C), _Block(masked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.embed(x))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_mask_the_caller_never_made_blames_the_caller_not_the_attention(dtype):
    torch.manual_seed(0)
    reference = _Model().to(dtype).eval()
    candidate = _Model(masked=False).to(dtype).eval()
    candidate.load_state_dict(reference.state_dict())
    x = torch.randn(2, N, 4, dtype=dtype)
    report = harness.compare(candidate, reference, x)
    assert (report.passed, report.culprit) == (False, "block"), report.format()
