"""mFormerV1 configuration: :class:`MFormerConfig`, the juncture check and the designed variants.

Kept apart from the model file (:mod:`candidates.mformer.mformer`) because checking a ConvNeXt /
RoPE-ViT checkpoint pair (``python -m harness compat``) reads them and must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from candidates.convnext.config import VARIANTS as CONVNEXT_VARIANTS
from candidates.convnext.config import ConvNeXtConfig
from candidates.rope_vit.config import VARIANTS as ROPE_VIT_VARIANTS
from candidates.rope_vit.config import RopeViTConfig
from harness.checks import check_type, check_value

__all__ = ["MFormerConfig", "VARIANTS", "check_juncture"]


def check_juncture(convnext_dims: tuple[int, ...], vit_embed_dim: int) -> None:
    """Raise ValueError unless the ConvNeXt width at the S2 juncture equals the ViT width."""
    check_value("ConvNeXt dims", tuple(convnext_dims), len(convnext_dims) >= 3,
                expected="the widths of at least 3 stages (the S2 juncture is dims[2])")
    if convnext_dims[2] != vit_embed_dim:
        raise ValueError(
            f"incompatible mFormerV1 pair: the ConvNeXt width at the S2 juncture is {convnext_dims[2]} "
            f"(dims={list(convnext_dims)}) but the RoPE-ViT input width (embed_dim) is {vit_embed_dim}; "
            f"pick a RoPE-ViT with embed_dim {convnext_dims[2]} or a ConvNeXt with dims[2] == {vit_embed_dim}"
        )


@dataclass(frozen=True)
class MFormerConfig:
    """Source ConvNeXt and RoPE-ViT architectures; only stages 0-1 and the juncture are used."""

    convnext: ConvNeXtConfig
    vit: RopeViTConfig
    convnext_name: str = "convnext"
    vit_name: str = "rope_mixed_vit"

    def __post_init__(self) -> None:
        check_type("MFormerConfig.convnext", self.convnext, ConvNeXtConfig)
        check_type("MFormerConfig.vit", self.vit, RopeViTConfig)
        for name in ("convnext_name", "vit_name"):
            check_type(f"MFormerConfig.{name}", getattr(self, name), str)
        check_juncture(self.convnext.dims, self.vit.embed_dim)
        check_value("MFormerConfig.vit.patch_size", self.vit.patch_size, self.vit.patch_size == 16,
                    expected="16 (the token grid is the juncture's stride-16 grid)")

    @property
    def width(self) -> int:
        return self.vit.embed_dim


_SMALL, _BASE, _LARGE = (f"rope_mixed_deit_{size}_patch16_LS" for size in ("small", "base", "large"))

# The four designed variants: (ConvNeXt checkpoint family, RoPE-ViT checkpoint family); read-only.
VARIANTS: Mapping[str, MFormerConfig] = MappingProxyType({
    "sm": MFormerConfig(CONVNEXT_VARIANTS["tiny"], ROPE_VIT_VARIANTS["small"], "convnext_tiny", _SMALL),
    "md": MFormerConfig(CONVNEXT_VARIANTS["small"], ROPE_VIT_VARIANTS["small"], "convnext_small", _SMALL),
    "lg": MFormerConfig(CONVNEXT_VARIANTS["large"], ROPE_VIT_VARIANTS["base"], "convnext_large", _BASE),
    "xl": MFormerConfig(CONVNEXT_VARIANTS["xlarge"], ROPE_VIT_VARIANTS["large"], "convnext_xlarge", _LARGE),
})
