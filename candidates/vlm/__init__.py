"""DINOv3 high-resolution vision-language path: encoder, modality projector, processor, weight layouts.

Names load on first use (:func:`candidates.exports.lazy_exports`): recognition imports no torch."""

from candidates.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "candidates.vlm.config": ("VARIANTS", "DinoV3Config"),
    "candidates.vlm.convert": (
        "TIMM_TABLE", "TRANSFORMERS_TABLE", "convert_timm_state_dict", "convert_transformers_state_dict", "recognize",
        "to_timm_state_dict", "to_transformers_state_dict",
    ),
    "candidates.vlm.dinov3": (
        "DinoV3Output", "DinoV3ViT", "dinov3_tiny", "dinov3_vit", "dinov3_vit_base", "dinov3_vit_large",
        "dinov3_vit_small",
    ),
    "candidates.vlm.processor": (
        "ImageGrid", "ImageProcessor", "ImageProcessorConfig", "ProcessedImage", "VLMCollator",
        "expand_image_tokens", "image_placeholder", "plan_image", "plan_image_with_budget",
    ),
    "candidates.vlm.projector": (
        "ModalityProjector", "ProjectorConfig", "pixel_shuffle_2d", "pixel_shuffle_square", "pixel_unshuffle_2d",
    ),
})
