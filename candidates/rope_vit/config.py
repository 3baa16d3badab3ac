"""RoPE-Mixed ViT configurations: :class:`RopeViTConfig` and the released variants, :data:`VARIANTS`.

Kept apart from the model file (:mod:`candidates.rope_vit.rope_vit`) because checkpoint
recognition (:mod:`candidates.rope_vit.convert`) reads the variants and must not import torch
(``python -m harness inspect`` starts in well under a second without it).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from harness.checks import check_int, check_number, check_value

__all__ = ["RopeViTConfig", "VARIANTS"]


@dataclass(frozen=True)
class RopeViTConfig:
    """Architecture of a RoPE-Mixed ViT; the released models differ in width, depth and heads."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    mlp_ratio: float = 4.0
    rope_temperature: float = 10.0
    layer_scale_init: float = 1e-5
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads", "patch_size", "in_chans"):
            check_int(f"RopeViTConfig.{name}", getattr(self, name), minimum=1)
        check_int("RopeViTConfig.num_classes", self.num_classes, minimum=0, fix="0 leaves the head out")
        # floats, so that an int never makes int-typed parameters (layer scale) or integer frequencies
        for name in ("mlp_ratio", "rope_temperature", "norm_eps"):
            object.__setattr__(self, name, check_number(f"RopeViTConfig.{name}", getattr(self, name), above=0))
        object.__setattr__(self, "layer_scale_init", check_number("RopeViTConfig.layer_scale_init",
                                                                  self.layer_scale_init))
        check_value("RopeViTConfig.num_heads", self.num_heads, self.embed_dim % self.num_heads == 0,
                    expected=f"a divisor of embed_dim {self.embed_dim}")
        check_value("RopeViTConfig.num_heads", self.num_heads, self.head_dim % 4 == 0,
                    expected=f"a count leaving head_dim = {self.embed_dim} / num_heads divisible by 4",
                    fix="2D rotary embedding rotates (x, y) pairs of each half of a head")
        check_value("RopeViTConfig.mlp_ratio", self.mlp_ratio, int(self.embed_dim * self.mlp_ratio) >= 1,
                    expected=f"a ratio leaving int(mlp_ratio * {self.embed_dim}) >= 1 MLP units")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


# read-only: the released architectures; derive others with ``rope_mixed_vit(variant, **overrides)``
VARIANTS: Mapping[str, RopeViTConfig] = MappingProxyType({
    "small": RopeViTConfig(embed_dim=384, depth=12, num_heads=6),
    "base": RopeViTConfig(embed_dim=768, depth=12, num_heads=12),
    "large": RopeViTConfig(embed_dim=1024, depth=24, num_heads=16),
})
