"""RoPE-Mixed ViT (Heo et al., ECCV 2024), timm-compatible names; see :mod:`.rope_vit` and :mod:`.convert`."""

from candidates.rope_vit.rope_vit import (
    VARIANTS,
    RopeMixedViT,
    RopeViTConfig,
    rope_mixed_vit,
    rope_mixed_vit_base,
    rope_mixed_vit_large,
    rope_mixed_vit_small,
)
from candidates.rope_vit.convert import (
    convert_original_state_dict,
    convert_timm_state_dict,
    is_original_layout,
    load_rope_vit_state_dict,
    rope_vit_to_original,
)

__all__ = [
    "VARIANTS", "RopeMixedViT", "RopeViTConfig", "convert_original_state_dict", "convert_timm_state_dict",
    "is_original_layout", "load_rope_vit_state_dict", "rope_mixed_vit", "rope_mixed_vit_base",
    "rope_mixed_vit_large", "rope_mixed_vit_small", "rope_vit_to_original",
]
