"""DINOv3 high-resolution vision-language path: encoder, modality projector, processor, weight layouts."""

from candidates.vlm.convert import (
    TIMM_TABLE, TRANSFORMERS_TABLE, convert_timm_state_dict, convert_transformers_state_dict, recognize,
    to_timm_state_dict, to_transformers_state_dict,
)
from candidates.vlm.dinov3 import (
    VARIANTS, DinoV3Config, DinoV3Output, DinoV3ViT, dinov3_tiny, dinov3_vit, dinov3_vit_base, dinov3_vit_large,
    dinov3_vit_small,
)
from candidates.vlm.processor import (
    ImageGrid, ImageProcessor, ImageProcessorConfig, ProcessedImage, VLMCollator,
    expand_image_tokens, image_placeholder, plan_image, plan_image_with_budget,
)
from candidates.vlm.projector import (
    ModalityProjector, ProjectorConfig, pixel_shuffle_2d, pixel_shuffle_square, pixel_unshuffle_2d,
)

__all__ = [
    "TIMM_TABLE", "TRANSFORMERS_TABLE", "convert_timm_state_dict", "convert_transformers_state_dict", "recognize",
    "to_timm_state_dict", "to_transformers_state_dict",
    "VARIANTS", "DinoV3Config", "DinoV3Output", "DinoV3ViT", "dinov3_tiny", "dinov3_vit", "dinov3_vit_base",
    "dinov3_vit_large", "dinov3_vit_small",
    "ImageGrid", "ImageProcessor", "ImageProcessorConfig", "ProcessedImage", "VLMCollator",
    "expand_image_tokens", "image_placeholder", "plan_image", "plan_image_with_budget",
    "ModalityProjector", "ProjectorConfig", "pixel_shuffle_2d", "pixel_shuffle_square", "pixel_unshuffle_2d",
]
