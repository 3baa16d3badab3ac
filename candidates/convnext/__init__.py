"""ConvNeXt (Liu et al. 2022), timm-compatible names; see :mod:`candidates.convnext.convnext`.

Names load on first use (:func:`candidates.exports.lazy_exports`): recognition imports no torch."""

from candidates.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "candidates.convnext.config": ("VARIANTS", "ConvNeXtConfig"),
    "candidates.convnext.convnext": (
        "ConvNeXt", "ConvNeXtBlock", "ConvNeXtStage", "DropPath", "LayerNorm2d", "Mlp", "convnext_base",
        "convnext_large", "convnext_small", "convnext_tiny", "convnext_xlarge", "create_convnext",
    ),
    "candidates.convnext.convert": ("convert_original_convnext", "convert_timm_state_dict", "convnext_to_original"),
})
