"""RoPE-Mixed ViT: a DeiT-III style ViT with learnable, mixed 2D rotary position embeddings.

Paper: Heo et al., "Rotary Position Embedding for Vision Transformer", ECCV 2024
(https://arxiv.org/abs/2403.13298). Original release: https://github.com/naver-ai/rope-vit
(``deit/models_v2_rope.py``, models ``rope_mixed_deit_{small,base,large}_patch16_LS``).
Reference for parity: timm 1.0.31 ``vit_{small,base,large}_patch16_rope_mixed_224``
(``timm/models/eva.py`` with ``rope_type='mixed'``, ``timm/layers/pos_embed_sincos.py``).

The model: a 16x16 patch embedding, a CLS token (no absolute position embedding), pre-norm
blocks with layer scale, a final LayerNorm and a linear head on the CLS token. Positions enter
only through the rotary embedding: every block ``l`` and head ``h`` owns learnable 2D frequency
vectors ``f_x[l, h], f_y[l, h]`` (length ``head_dim // 2``); the patch at column ``x`` and row
``y`` of the *true* token grid rotates query/key pair ``i`` by the angle
``x * f_x[l, h, i] + y * f_y[l, h, i]`` ("mixed": each frequency mixes both axes). The CLS token
is not rotated. Because the angles are computed from the grid of the input at hand, the model
runs at any resolution whose sides are multiples of the patch size, square or not.

Deliberate choices:
  * Angles and their sin/cos are computed in float32 and cast to the parameter dtype afterwards,
    as timm does (and as the original does under autocast). A float64 model therefore carries
    float32-accurate rotary phases; this is matched on purpose so float64 parity is exact.
  * Attention is written out (scaled q k^T, softmax, times v), no fused kernel, so every step is
    traceable and bitwise comparable with the reference's eager path.
  * Parameter names follow timm's Eva (``blocks.i.gamma_1``, ``attn.qkv``, ``rope.freqs``), so a
    timm checkpoint loads as is; :mod:`candidates.rope_vit.convert` maps the original release's
    layout (and recognizes both).

The configuration (:class:`RopeViTConfig`) and the released variants (:data:`VARIANTS`) live in
:mod:`candidates.rope_vit.config`, which imports no torch; they are re-exported here.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from candidates.layers import Mlp, patch_grid
from candidates.rope_vit.config import VARIANTS, RopeViTConfig  # re-exported
from harness.checks import check_choice, check_type

__all__ = [
    "RopeViTConfig", "MixedRope", "PatchEmbed", "Attention", "Mlp", "Block", "RopeMixedViT",
    "VARIANTS", "rope_mixed_vit_small", "rope_mixed_vit_base",
    "rope_mixed_vit_large", "rope_mixed_vit",
]


def init_mixed_frequencies(head_dim: int, depth: int, num_heads: int, temperature: float) -> torch.Tensor:
    """The paper's init: axial magnitudes, one random rotation per (block, head); (2, depth, heads, head_dim // 2)."""
    magnitude = temperature ** (-torch.arange(0, head_dim, 4, dtype=torch.float32) / head_dim)
    theta = torch.rand(depth, num_heads, 1) * 2 * torch.pi
    # the first half of the pairs follows direction theta, the second half the orthogonal one
    f_x = torch.cat([magnitude * torch.cos(theta), magnitude * torch.cos(theta + torch.pi / 2)], dim=-1)
    f_y = torch.cat([magnitude * torch.sin(theta), magnitude * torch.sin(theta + torch.pi / 2)], dim=-1)
    return torch.stack([f_x, f_y])


class MixedRope(nn.Module):
    """Learnable mixed 2D rotary frequencies; ``forward(grid)`` -> per-block sin/cos tables.

    Output (depth, heads, H * W, 2 * head_dim): ``[sin | cos]`` on the last axis, each repeated
    per rotary pair (``s0 s0 s1 s1 ...``) so it multiplies interleaved query/key pairs directly.
    """

    def __init__(self, *, head_dim: int, depth: int, num_heads: int, temperature: float) -> None:
        super().__init__()
        self.freqs = nn.Parameter(init_mixed_frequencies(head_dim, depth, num_heads, temperature))

    def forward(self, grid_size: tuple[int, int]) -> torch.Tensor:
        height, width = grid_size
        # row-major token order, as the patch embedding flattens: t_x = column, t_y = row
        rows, cols = torch.meshgrid(
            torch.arange(height, device=self.freqs.device, dtype=torch.float32),
            torch.arange(width, device=self.freqs.device, dtype=torch.float32),
            indexing="ij",
        )
        t_x, t_y = cols.reshape(-1), rows.reshape(-1)                         # (N,)
        f_x, f_y = self.freqs.float()                                          # (depth, heads, P)
        angles = t_x[:, None] * f_x[..., None, :] + t_y[:, None] * f_y[..., None, :]  # (depth, heads, N, P)
        sin = angles.sin().repeat_interleave(2, dim=-1)
        cos = angles.cos().repeat_interleave(2, dim=-1)
        return torch.cat([sin, cos], dim=-1).to(self.freqs.dtype)


def apply_rotary(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs ``(x0, x1)`` of x (..., N, D) by the angles in ``table`` (..., N, 2D)."""
    sin, cos = table.chunk(2, dim=-1)
    pairs = x.unflatten(-1, (-1, 2))                                           # (..., N, D/2, 2)
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)  # (-x1, x0, -x3, x2, ...)
    return (x * cos + rotated * sin).to(x.dtype)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` convolution; (B, C, H, W) -> (B, H/p * W/p, embed_dim)."""

    def __init__(self, *, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention; rotary embedding on the patch tokens of q and k only."""

    def __init__(self, *, dim: int, num_heads: int, num_prefix_tokens: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.num_prefix_tokens = num_prefix_tokens
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                        # each (B, heads, N, head_dim)
        p = self.num_prefix_tokens
        q = torch.cat([q[:, :, :p], apply_rotary(q[:, :, p:], rope)], dim=2)
        k = torch.cat([k[:, :, :p], apply_rotary(k[:, :, p:], rope)], dim=2)
        weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)    # (B, heads, N, N)
        x = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(x)


class Block(nn.Module):
    """Pre-norm transformer block with per-channel layer scale on both residual branches."""

    def __init__(self, config: RopeViTConfig, *, num_prefix_tokens: int = 1) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.attn = Attention(dim=dim, num_heads=config.num_heads, num_prefix_tokens=num_prefix_tokens)
        self.gamma_1 = nn.Parameter(torch.full((dim,), config.layer_scale_init))
        self.norm2 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.mlp = Mlp(dim=dim, hidden_dim=int(dim * config.mlp_ratio))
        self.gamma_2 = nn.Parameter(torch.full((dim,), config.layer_scale_init))

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma_1 * self.attn(self.norm1(x), rope)
        x = x + self.gamma_2 * self.mlp(self.norm2(x))
        return x


class RopeMixedViT(nn.Module):
    """Patch embedding, CLS token, RoPE-mixed blocks, final norm, linear head on the CLS token."""

    def __init__(self, config: RopeViTConfig) -> None:
        super().__init__()
        self.config = check_type("RopeMixedViT(config)", config, RopeViTConfig,
                                 fix='build one with RopeViTConfig(...) or rope_mixed_vit("small", ...)')
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(patch_size=config.patch_size, in_chans=config.in_chans, embed_dim=dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.rope = MixedRope(
            head_dim=config.head_dim, depth=config.depth, num_heads=config.num_heads,
            temperature=config.rope_temperature,
        )
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.head = nn.Linear(dim, config.num_classes) if config.num_classes else nn.Identity()

    def grid_size(self, image: torch.Tensor) -> tuple[int, int]:
        """(rows, cols) of patch tokens; a ValueError if a side is not a multiple of the patch."""
        return patch_grid("RopeMixedViT input", image, in_chans=self.config.in_chans, stride=self.config.patch_size)

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        grid = self.grid_size(image)
        x = self.patch_embed(image)                                            # (B, N, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, C)
        rope = self.rope(grid)                                                 # (depth, heads, N, 2 * head_dim)
        for block, table in zip(self.blocks, rope):
            x = block(x, table)
        return self.norm(x)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(image)[:, 0])


# ---------------------------------------------------------------------------------------------
# Factories
# ---------------------------------------------------------------------------------------------

def rope_mixed_vit(variant: str, **overrides) -> RopeMixedViT:
    """``rope_mixed_vit("small", depth=2, num_classes=10)``: a released variant with overrides."""
    check_choice("RoPE-ViT variant", variant, VARIANTS)
    return RopeMixedViT(replace(VARIANTS[variant], **overrides))


def rope_mixed_vit_small(**overrides) -> RopeMixedViT:
    """RoPE-Mixed ViT-S (384 wide, 12 blocks, 6 heads); ``overrides`` replace RopeViTConfig fields."""
    return rope_mixed_vit("small", **overrides)


def rope_mixed_vit_base(**overrides) -> RopeMixedViT:
    """RoPE-Mixed ViT-B (768 wide, 12 blocks, 12 heads); ``overrides`` replace RopeViTConfig fields."""
    return rope_mixed_vit("base", **overrides)


def rope_mixed_vit_large(**overrides) -> RopeMixedViT:
    """RoPE-Mixed ViT-L (1024 wide, 24 blocks, 16 heads); ``overrides`` replace RopeViTConfig fields."""
    return rope_mixed_vit("large", **overrides)
