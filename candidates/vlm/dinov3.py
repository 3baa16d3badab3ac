"""DINOv3 Vision Transformer with 2D RoPE on the true (possibly rectangular) patch grid.

Paper: Siméoni et al., "DINOv3", arXiv:2508.10104.
Upstream: github.com/facebookresearch/dinov3 (``RopePositionEmbedding``), ported as
``transformers.DINOv3ViTModel`` and timm ``vit_*_patch16_dinov3`` (``timm.models.eva.Eva`` with
``RotaryEmbeddingDinoV3``). Both ports are parity references for this file.

The encoder takes any ``H, W`` that are multiples of the patch size. The patch grid
``(Hp, Wp) = (H / p, W / p)`` is read from the patch embedding's output shape and is the only
source of RoPE positions (never a ``sqrt(N)`` guess), and it is returned with the tokens so that a
projector downstream can fold a rectangular grid.

:class:`DinoV3Config` and the released :data:`VARIANTS` are defined in :mod:`candidates.vlm.config`
(which imports no torch, for checkpoint recognition) and re-exported here.

RoPE, as upstream, is :class:`candidates.layers.RopeEmbedding` (shared with VidEoMT's DINOv3
backbone): patch centres in ``[-1, 1]``, ``head_dim / 4`` periods per axis, "rotate half"
pairing, applied to patch tokens only (CLS and register tokens are not rotated).

Deliberate differences:

- cos/sin are computed in float32 (float64 when the model runs in float64) and cast to the
  activation dtype at the end, whatever the parameter dtype; the transformers port casts its
  frequency buffer with the model, so in bfloat16 it rotates with bfloat16 frequencies.
- The two ports round differently (``angle = 2*pi*c / period`` in timm and the original code;
  ``(2*pi*c in float32) * (1 / period in float32)`` in transformers). They agree to float32
  rounding; ``rope_impl`` reproduces either one bit for bit so that float64 parity is exact.
- Attention stores q/k/v as one fused ``qkv`` weight (timm's key layout) but applies it as three
  traced projections ``q_proj``/``k_proj``/``v_proj`` (transformers' structure); the key never
  has a bias (absent upstream too, or a masked zero); ``q_bias``/``v_bias`` are separate parameters.
- Training-time RoPE coordinate augmentation (shift/jitter/rescale), the mask token and
  stochastic depth are not implemented: this encoder is for inference and feature extraction.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from candidates.layers import Mlp, RopeEmbedding, apply_rope_to_patches, patch_grid
from candidates.vlm.config import VARIANTS, DinoV3Config  # re-exported
from harness.checks import check_choice, check_type

__all__ = [
    "DinoV3Config", "DinoV3Output", "DinoV3ViT", "VARIANTS", "dinov3_vit",
    "dinov3_vit_small", "dinov3_vit_base", "dinov3_vit_large", "dinov3_tiny",
]


class DinoV3Output(NamedTuple):
    """Encoder output: normalized tokens ``(B, prefix + Hp*Wp, D)`` and the patch grid."""

    last_hidden_state: torch.Tensor
    patch_grid: tuple[int, int]
    num_prefix_tokens: int

    @property
    def patch_tokens(self) -> torch.Tensor:
        """``(B, Hp*Wp, D)``, row-major over the grid."""
        return self.last_hidden_state[:, self.num_prefix_tokens:]


# --------------------------------------------------------------------------- leaf modules


class PatchEmbed(nn.Module):
    """Non-overlapping ``p x p`` patches -> tokens on their ``(Hp, Wp)`` grid, channels last."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patch_grid("pixel_values", pixel_values, in_chans=self.proj.in_channels, stride=self.patch_size,
                   fix="resize with candidates.vlm.processor.ImageProcessor")
        x = self.proj(pixel_values)  # (B, D, Hp, Wp)
        return x.permute(0, 2, 3, 1)  # (B, Hp, Wp, D)


class Projection(nn.Module):
    """``x @ weight.T + bias`` with weights held by the parent (a block of the fused ``qkv`` weight).

    A module of its own so that parity tracing compares each of q, k, v with its transformers
    twin (``q_proj``/``k_proj``/``v_proj``), which localizes a query- or value-bias error.
    """

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)


class Attention(nn.Module):
    """Multi-head self-attention with RoPE on the patch tokens.

    The q, k, v weights are stored fused as ``qkv.weight`` (rows ``[q; k; v]``, timm's layout, so
    its checkpoints load by name) and applied as three projections (transformers' structure).
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)  # weight storage only, see the class docstring
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.q_proj, self.k_proj, self.v_proj = Projection(), Projection(), Projection()
        self.proj = nn.Linear(dim, dim)

    def project(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries and keys (rotated) and values, each ``(B, heads, T, head_dim)``."""
        batch, tokens, dim = x.shape
        w_q, w_k, w_v = self.qkv.weight.chunk(3)  # 3 x (D, D)
        q = self.q_proj(x, w_q, self.q_bias)  # (B, T, D)
        k = self.k_proj(x, w_k, None)  # the key never has a bias
        v = self.v_proj(x, w_v, self.v_bias)
        q, k, v = (t.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        cos, sin = rope
        return apply_rope_to_patches(q, cos, sin), apply_rope_to_patches(k, cos, sin), v  # (B, heads, T, head_dim)

    def logits(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Pre-softmax attention scores ``(B, heads, T, T)`` (for inspection and tests)."""
        q, k, _ = self.project(x, rope)
        return (q @ k.transpose(-2, -1)) * self.scale

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.project(x, rope)
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, heads, T, head_dim)
        x = x.transpose(1, 2).reshape(batch, tokens, dim)  # (B, T, D)
        return self.proj(x)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


# --------------------------------------------------------------------------- block, model


class Block(nn.Module):
    """Pre-norm transformer block with layer scale on both branches."""

    def __init__(self, config: DinoV3Config) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.attn = Attention(dim, config.num_heads, qkv_bias=config.qkv_bias)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.mlp = Mlp(dim, config.mlp_hidden_dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x


class DinoV3ViT(nn.Module):
    """DINOv3 encoder: ``(B, C, H, W)`` -> :class:`DinoV3Output` (tokens and patch grid)."""

    def __init__(self, config: DinoV3Config) -> None:
        super().__init__()
        self.config = check_type("config", config, DinoV3Config)
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_token = nn.Parameter(torch.zeros(1, config.num_reg_tokens, dim)) if config.num_reg_tokens else None
        self.rope = RopeEmbedding(config.head_dim, theta=config.rope_theta, impl=config.rope_impl)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.trunc_normal_(token, std=0.02)

    def prefix_tokens(self, batch: int) -> torch.Tensor:
        """``(B, 1 + R, D)``: CLS then register tokens."""
        tokens = [self.cls_token] + ([self.reg_token] if self.reg_token is not None else [])
        return torch.cat(tokens, dim=1).expand(batch, -1, -1)

    def forward(self, pixel_values: torch.Tensor) -> DinoV3Output:
        patches = self.patch_embed(pixel_values)  # (B, Hp, Wp, D)
        batch, hp, wp, dim = patches.shape
        rope = self.rope((hp, wp), dtype=patches.dtype, device=patches.device)  # 2 x (Hp*Wp, head_dim)
        x = torch.cat([self.prefix_tokens(batch), patches.reshape(batch, hp * wp, dim)], dim=1)  # (B, 1+R+N, D)
        for block in self.blocks:
            x = block(x, rope)
        return DinoV3Output(self.norm(x), (hp, wp), self.config.num_prefix_tokens)


# --------------------------------------------------------------------------- factories


def dinov3_vit(variant: str = "vit_small_patch16_dinov3", **overrides) -> DinoV3ViT:
    """A randomly initialized :class:`DinoV3ViT`; ``overrides`` replace config fields."""
    check_choice("DINOv3 variant", variant, VARIANTS)
    return DinoV3ViT(replace(VARIANTS[variant], **overrides))


def dinov3_vit_small(**overrides) -> DinoV3ViT:
    return dinov3_vit("vit_small_patch16_dinov3", **overrides)


def dinov3_vit_base(**overrides) -> DinoV3ViT:
    return dinov3_vit("vit_base_patch16_dinov3", **overrides)


def dinov3_vit_large(**overrides) -> DinoV3ViT:
    return dinov3_vit("vit_large_patch16_dinov3", **overrides)


def dinov3_tiny(**overrides) -> DinoV3ViT:
    return dinov3_vit("dinov3_tiny", **overrides)
