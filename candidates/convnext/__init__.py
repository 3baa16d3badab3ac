"""ConvNeXt (Liu et al. 2022), timm-compatible names; see :mod:`candidates.convnext.convnext`."""

from candidates.convnext.convnext import (
    VARIANTS,
    ConvNeXt,
    ConvNeXtBlock,
    ConvNeXtConfig,
    ConvNeXtStage,
    DropPath,
    LayerNorm2d,
    Mlp,
    convnext_base,
    convnext_large,
    convnext_small,
    convnext_tiny,
    convnext_xlarge,
    create_convnext,
)
from candidates.convnext.convert import convert_original_convnext, convert_timm_state_dict, convnext_to_original

__all__ = [
    "VARIANTS", "ConvNeXt", "ConvNeXtBlock", "ConvNeXtConfig", "ConvNeXtStage", "DropPath",
    "LayerNorm2d", "Mlp", "convert_original_convnext", "convert_timm_state_dict", "convnext_to_original",
    "convnext_base", "convnext_large",
    "convnext_small", "convnext_tiny", "convnext_xlarge", "create_convnext",
]
