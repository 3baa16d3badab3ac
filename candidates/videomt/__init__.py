"""VidEoMT video segmentation (DINOv2- and DINOv3-style backbones); its weight mappings are in
:mod:`candidates.videomt.convert`.

Names load on first use (:func:`candidates.exports.lazy_exports`): recognition imports no torch."""

from candidates.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "candidates.videomt.config": (
        "VARIANTS", "VidEoMTConfig", "videomt_dinov3_small_config", "videomt_dinov3_tiny_config",
        "videomt_small_config", "videomt_tiny_config",
    ),
    "candidates.videomt.videomt": (
        "QueryPropagation", "VidEoMT", "VidEoMTOutput", "videomt_dinov3_small", "videomt_dinov3_tiny",
        "videomt_small", "videomt_tiny",
    ),
})
