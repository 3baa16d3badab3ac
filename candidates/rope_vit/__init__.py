"""RoPE-Mixed ViT (Heo et al., ECCV 2024), timm-compatible names; see :mod:`.rope_vit`."""

from candidates.rope_vit.rope_vit import (
    ROPE_VIT_VARIANTS,
    RopeMixedViT,
    RopeViTConfig,
    convert_original_state_dict,
    convert_timm_state_dict,
    is_original_layout,
    load_rope_vit_state_dict,
    rope_mixed_vit,
    rope_mixed_vit_base,
    rope_mixed_vit_large,
    rope_mixed_vit_small,
)

__all__ = [
    "ROPE_VIT_VARIANTS", "RopeMixedViT", "RopeViTConfig", "convert_original_state_dict", "convert_timm_state_dict",
    "is_original_layout", "load_rope_vit_state_dict", "rope_mixed_vit", "rope_mixed_vit_base",
    "rope_mixed_vit_large", "rope_mixed_vit_small",
]
