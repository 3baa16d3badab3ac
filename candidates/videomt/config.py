"""VidEoMT configurations: :class:`VidEoMTConfig`, the released shapes (:data:`VARIANTS`) and their
``*_config`` factories.

Kept apart from the model file (:mod:`candidates.videomt.videomt`) because checkpoint recognition
reads the variants and must not import torch (``python -m harness inspect`` starts in well under a
second without it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Mapping

from harness.checks import check_choice, check_int, check_number, check_type, check_value

__all__ = ["ACTIVATIONS", "VARIANTS", "VidEoMTConfig", "videomt_tiny_config", "videomt_dinov3_tiny_config",
           "videomt_small_config", "videomt_dinov3_small_config"]

Backbone = Literal["dinov2", "dinov3"]
# ``hidden_act`` names; the model file maps each to its torch module (and must know every one)
ACTIVATIONS = ("gelu", "relu", "silu")


@dataclass(frozen=True)
class VidEoMTConfig:
    """Architecture of one VidEoMT variant (validated on construction)."""

    backbone: Backbone = "dinov2"
    hidden_size: int = 32
    num_layers: int = 3
    num_heads: int = 2
    intermediate_size: int = 64
    patch_size: int = 4
    image_size: int = 16
    num_channels: int = 3
    num_register_tokens: int = 2
    num_queries: int = 5
    num_blocks: int = 1
    num_labels: int = 4
    num_upscale_blocks: int = 2
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"
    query_bias: bool = True
    key_bias: bool = True
    value_bias: bool = True
    rope_theta: float = 100.0  # DINOv3 only
    masked_attention: bool = False  # EoMT mask annealing in the query stage (EoMT-DINOv3 does it)

    def __post_init__(self) -> None:
        check_choice("VidEoMTConfig.backbone", self.backbone, ("dinov2", "dinov3"))
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "patch_size",
                     "image_size", "num_channels", "num_queries", "num_blocks", "num_labels"):
            check_int(f"VidEoMTConfig.{name}", getattr(self, name), minimum=1)
        for name in ("num_register_tokens", "num_upscale_blocks"):
            check_int(f"VidEoMTConfig.{name}", getattr(self, name), minimum=0)
        for name in ("layer_norm_eps", "rope_theta"):
            object.__setattr__(self, name, check_number(f"VidEoMTConfig.{name}", getattr(self, name), above=0))
        for name in ("query_bias", "key_bias", "value_bias", "masked_attention"):
            check_type(f"VidEoMTConfig.{name}", getattr(self, name), bool)
        check_choice("VidEoMTConfig.hidden_act", self.hidden_act, ACTIVATIONS)
        check_value("VidEoMTConfig.num_heads", self.num_heads, self.hidden_size % self.num_heads == 0,
                    expected=f"a divisor of hidden_size ({self.hidden_size})")
        check_value("VidEoMTConfig.num_blocks", self.num_blocks, self.num_blocks <= self.num_layers,
                    expected=f"at most num_layers ({self.num_layers})", fix="the query stage is the last layers")
        check_value("VidEoMTConfig.image_size", self.image_size, self.image_size % self.patch_size == 0,
                    expected=f"a multiple of patch_size ({self.patch_size})")
        if self.backbone == "dinov3":
            fits = [h for h in range(1, self.hidden_size + 1) if self.hidden_size % (4 * h) == 0]
            check_value("VidEoMTConfig.num_heads", self.num_heads, self.head_dim % 4 == 0,
                        expected=f"one of {fits}, leaving head_dim = {self.hidden_size} / num_heads divisible by 4",
                        fix="2D RoPE rotates each head in quarters")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens


# ----------------------------------------------------------------------------- variants and factories

_TINY = VidEoMTConfig(num_blocks=2)  # hidden 32, 3 layers (2 in the query stage), 16x16 frames
# ViT-S width (384, 6 heads, 12 layers, 4 query blocks), the released VidEoMT-S shape, 128x128 frames
_SMALL = VidEoMTConfig(hidden_size=384, num_layers=12, num_heads=6, intermediate_size=1536, patch_size=16,
                       image_size=128, num_register_tokens=4, num_queries=20, num_blocks=4, num_labels=40)
_DINOV3 = dict(backbone="dinov3", key_bias=False, masked_attention=True)  # RoPE, EoMT-DINOv3's biases and masking
VARIANTS: Mapping[str, VidEoMTConfig] = MappingProxyType({
    "tiny": _TINY,  # DINOv2-style; for tests
    "dinov3_tiny": dataclasses.replace(_TINY, **_DINOV3),
    "small": _SMALL,
    "dinov3_small": dataclasses.replace(_SMALL, **_DINOV3),
})


def videomt_tiny_config(**overrides) -> VidEoMTConfig:
    """``VARIANTS["tiny"]`` with ``overrides`` (config fields)."""
    return dataclasses.replace(VARIANTS["tiny"], **overrides)


def videomt_dinov3_tiny_config(**overrides) -> VidEoMTConfig:
    """``VARIANTS["dinov3_tiny"]`` (RoPE, no key bias, masked attention) with ``overrides``."""
    return dataclasses.replace(VARIANTS["dinov3_tiny"], **overrides)


def videomt_small_config(**overrides) -> VidEoMTConfig:
    """``VARIANTS["small"]`` with ``overrides``."""
    return dataclasses.replace(VARIANTS["small"], **overrides)


def videomt_dinov3_small_config(**overrides) -> VidEoMTConfig:
    """``VARIANTS["dinov3_small"]`` (ViT-S width, DINOv3-style) with ``overrides``."""
    return dataclasses.replace(VARIANTS["dinov3_small"], **overrides)
