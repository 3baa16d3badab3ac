"""A port's final norm run on ``[pooled; tokens]`` and keeping the pooled row, against an original
whose head norms the pooled map alone, kept as ``(B, C, 1, 1)``: the norms hold the same weights
and compute the same values at that one position, axes of size 1 aside. The port's norm is paired
with the head's norm, not with the head around it, so a wrong eps there is blamed on the norm and
explained by the eps."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import harness
from helpers import compare_port

C = 16


class Norm2d(nn.LayerNorm):
    """A layer norm over the channels of an NCHW map."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool, self.norm = nn.AdaptiveAvgPool2d(1), Norm2d(C)

    def forward(self, x):
        return self.norm(self.pool(x)).flatten(1)


class Original(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, C, 2, stride=2), Head()

    def forward(self, x):
        return self.head(F.gelu(self.stem(x)))


class Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.final_norm = nn.Conv2d(3, C, 2, stride=2), nn.LayerNorm(C)

    def forward(self, x):
        tokens = F.gelu(self.embed(x)).flatten(2).transpose(1, 2)               # (B, N, C)
        joined = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)       # (B, 1 + N, C)
        return self.final_norm(joined)[:, 0]                                    # (B, C)


def ported(change=lambda port: None):
    reference = Original().double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(1))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return compare_port(Port().double().eval(), reference, x, change)


def test_the_pooled_norm_is_paired_with_the_heads_norm():
    report = ported()
    assert report.passed, report.format()
    twin = next((row.reference for row in report.rows if row.candidate == "final_norm"), None)
    assert twin == "head.norm", f"final_norm paired with {twin}, expected head.norm\n{report.format()}"


def test_a_wrong_eps_in_the_pooled_norm_blames_the_norm():
    report = ported(lambda port: setattr(port.final_norm, "eps", 1e-2))
    assert not report.passed and report.culprit == "final_norm", report.format()
    assert "eps" in report.diagnosis[0]["text"], report.diagnosis[0]["text"]
