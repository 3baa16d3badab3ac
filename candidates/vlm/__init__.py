"""DINOv3 high-resolution vision-language path: encoder, modality projector, processor."""

from candidates.vlm.dinov3 import (
    VARIANTS, DinoV3Config, DinoV3Output, DinoV3ViT, convert_timm_state_dict,
    convert_transformers_state_dict, dinov3_vit,
)
from candidates.vlm.processor import (
    ImageGrid, ImageProcessor, ImageProcessorConfig, ProcessedImage, VLMCollator,
    expand_image_tokens, image_placeholder, plan_image, plan_image_with_budget,
)
from candidates.vlm.projector import (
    ModalityProjector, ProjectorConfig, pixel_shuffle_2d, pixel_shuffle_square, pixel_unshuffle_2d,
)

__all__ = [
    "VARIANTS", "DinoV3Config", "DinoV3Output", "DinoV3ViT", "convert_timm_state_dict",
    "convert_transformers_state_dict", "dinov3_vit",
    "ImageGrid", "ImageProcessor", "ImageProcessorConfig", "ProcessedImage", "VLMCollator",
    "expand_image_tokens", "image_placeholder", "plan_image", "plan_image_with_budget",
    "ModalityProjector", "ProjectorConfig", "pixel_shuffle_2d", "pixel_shuffle_square", "pixel_unshuffle_2d",
]
