"""RoPE-Mixed ViT (Heo et al., ECCV 2024), timm-compatible names; see :mod:`.rope_vit` and :mod:`.convert`.

Names load on first use (:func:`candidates.exports.lazy_exports`): recognition imports no torch."""

from candidates.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "candidates.rope_vit.config": ("VARIANTS", "RopeViTConfig"),
    "candidates.rope_vit.rope_vit": (
        "RopeMixedViT", "rope_mixed_vit", "rope_mixed_vit_base", "rope_mixed_vit_large", "rope_mixed_vit_small",
    ),
    "candidates.rope_vit.convert": (
        "convert_original_state_dict", "convert_timm_state_dict", "is_original_layout", "load_rope_vit_state_dict",
        "rope_vit_to_original",
    ),
})
