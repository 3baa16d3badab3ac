"""DINOv3 ViT configurations: :class:`DinoV3Config` and the released variants, :data:`VARIANTS`.

Kept apart from the model file (:mod:`candidates.vlm.dinov3`) because checkpoint recognition
reads the variants and must not import torch (``python -m harness inspect`` starts in well under
a second without it).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping

from harness.checks import check_choice, check_int, check_number, check_type, check_value

if TYPE_CHECKING:
    from candidates.layers import RopeImpl  # candidates.layers imports torch

__all__ = ["DinoV3Config", "VARIANTS"]


@dataclass(frozen=True)
class DinoV3Config:
    """Architecture of a DINOv3 ViT.

    Attributes:
        patch_size: side of the square, non-overlapping patches (pixels).
        embed_dim, depth, num_heads: width, number of blocks, attention heads.
        mlp_ratio: MLP hidden width over ``embed_dim``.
        num_reg_tokens: register ("storage") tokens after the CLS token.
        qkv_bias: query and value biases (the key never has one).
        rope_theta: base of the RoPE period schedule.
        rope_impl: ``"periods"`` (original code, timm) or ``"inv_freq"`` (transformers) rounding.
        norm_eps: LayerNorm epsilon.
        in_chans: image channels.
    """

    patch_size: int = 16
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_reg_tokens: int = 4
    qkv_bias: bool = False
    rope_theta: float = 100.0
    rope_impl: RopeImpl = "periods"
    norm_eps: float = 1e-5
    in_chans: int = 3

    def __post_init__(self) -> None:
        for name in ("patch_size", "embed_dim", "depth", "num_heads", "in_chans"):
            check_int(f"DinoV3Config.{name}", getattr(self, name), minimum=1)
        check_int("DinoV3Config.num_reg_tokens", self.num_reg_tokens, minimum=0)
        check_type("DinoV3Config.qkv_bias", self.qkv_bias, bool)
        for name in ("mlp_ratio", "rope_theta", "norm_eps"):
            object.__setattr__(self, name, check_number(f"DinoV3Config.{name}", getattr(self, name), above=0))
        check_choice("DinoV3Config.rope_impl", self.rope_impl, ("periods", "inv_freq"))
        check_value("DinoV3Config.num_heads", self.num_heads, self.embed_dim % self.num_heads == 0,
                    expected=f"a divisor of embed_dim {self.embed_dim}")
        check_value("DinoV3Config.num_heads", self.num_heads, self.head_dim % 4 == 0,
                    expected=f"a count leaving head_dim = {self.embed_dim} / num_heads divisible by 4",
                    fix="2D RoPE rotates (y, x) pairs of each half of a head")
        check_value("DinoV3Config.mlp_ratio", self.mlp_ratio, self.mlp_hidden_dim >= 1,
                    expected=f"a ratio leaving int(mlp_ratio * {self.embed_dim}) >= 1 MLP units")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def num_prefix_tokens(self) -> int:
        """CLS + register tokens in front of the patch tokens."""
        return 1 + self.num_reg_tokens


# read-only: derive other architectures with ``candidates.vlm.dinov3.dinov3_vit(variant, **overrides)``
VARIANTS: Mapping[str, DinoV3Config] = MappingProxyType({
    "vit_small_patch16_dinov3": DinoV3Config(embed_dim=384, depth=12, num_heads=6),
    "vit_small_patch16_dinov3_qkvb": DinoV3Config(embed_dim=384, depth=12, num_heads=6, qkv_bias=True),
    "vit_base_patch16_dinov3": DinoV3Config(embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_dinov3": DinoV3Config(embed_dim=1024, depth=24, num_heads=16),
    # Tests and parity pairs: every code path (registers, q/v bias, several heads) at toy width.
    "dinov3_tiny": DinoV3Config(embed_dim=32, depth=2, num_heads=2, qkv_bias=True),
})
