"""An attention with as many tokens as heads, whose port splits its fused q/k/v per token
(``(B, N, H, D)``, then einsums) where the reference splits it per head (``(B, H, N, D)``): ``q * scale``
holds the reference's values with two axes of one size exchanged, which no layout convention
relates. The einsum after it agreeing shows that harmless; the bug further on is the finding, not
the unbind that splits the fused projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import findings_text

HEADS, D, TOKENS = 4, 16, 4  # as many tokens as heads


class _HeadsFirst(nn.Module):
    """timm's talking-heads attention: heads split before the tokens, mixes as linears."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.proj_l, self.proj_w = nn.Linear(HEADS, HEADS), nn.Linear(HEADS, HEADS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (c // HEADS) ** -0.5, qkv[1], qkv[2]
        a = self.proj_l((q @ k.transpose(-2, -1)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        a = self.proj_w(a.softmax(-1).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, c))


class _TokensFirst(nn.Module):
    """The port: the fused projection unbound per token, the mixes written as einsums."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.o = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.pre, self.post = nn.Linear(HEADS, HEADS), nn.Linear(HEADS, HEADS)
        self.swap_mixes = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, HEADS, c // HEADS).unbind(2)
        pre, post = (self.post, self.pre) if self.swap_mixes else (self.pre, self.post)
        a = torch.einsum("bnhd,bmhd->bhnm", q * (c // HEADS) ** -0.5, k)
        a = torch.einsum("bhnm,gh->bgnm", a, pre.weight) + pre.bias[None, :, None, None]
        a = torch.einsum("bhnm,gh->bgnm", a.softmax(-1), post.weight) + post.bias[None, :, None, None]
        return self.o(torch.einsum("bhnm,bmhd->bnhd", a, v).reshape(b, n, c))


class _Block(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(D), attn
        self.gamma = nn.Parameter(torch.full((D,), 0.5))
        self.layer_scale = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attn(self.norm(x))
        return x + (self.gamma * y if self.layer_scale else y)


def _why(candidate: nn.Module, reference: nn.Module, change) -> tuple[str, str]:
    """The first finding and all of them, for ``change`` made to the candidate after the weights are
    carried over (the port's bug)."""
    g = torch.Generator().manual_seed(0)
    candidate, reference = candidate.double().eval(), reference.double().eval()
    harness.randomize_(reference, g)
    x = torch.randn(1, TOKENS, D, generator=g, dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    change(candidate)
    report = harness.compare(candidate, reference, x, weights=weights)
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    return why, findings_text(report.diagnosis)


def test_a_dropped_layer_scale_is_named_not_the_per_token_split():
    why, all_ = _why(_Block(_TokensFirst()), _Block(_HeadsFirst()), lambda m: setattr(m, "layer_scale", False))
    assert "mul by gamma missing" in why and "unbind" not in why, \
        f"expected the missing layer-scale mul by gamma, got:\n{all_}"


def test_swapped_talking_heads_mixes_name_the_mix_applied_in_the_other_place():
    why, all_ = _why(_TokensFirst(), _HeadsFirst(), lambda m: setattr(m, "swap_mixes", True))
    assert "unbind" not in why and "proj_l" in why and "pre" in why, \
        f"expected the pre-softmax mix (proj_l, the port's pre) named as applied elsewhere, got:\n{all_}"


class _SquareMap(nn.Module):
    def __init__(self, transpose: bool = False) -> None:
        super().__init__()
        self.conv, self.transpose = nn.Conv2d(4, 4, 3, padding=1), transpose

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.gelu(x.transpose(2, 3) if self.transpose else x))


def test_a_square_map_transposed_before_an_activation_is_still_the_finding():
    g = torch.Generator().manual_seed(0)
    candidate, reference = _SquareMap(transpose=True).double().eval(), _SquareMap().double().eval()
    x = torch.randn(1, 4, 6, 6, generator=g, dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, x, weights=weights)
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert "transpose" in why, f"expected the extra transpose of H and W, got:\n{findings_text(report.diagnosis)}"
