"""mFormerV1: ConvNeXt trunk to stride 16 + RoPE-Mixed ViT blocks; see :mod:`.mformer`, :mod:`.convert`, :mod:`.assembly`.

Names load on first use (:func:`candidates.exports.lazy_exports`): recognition imports no torch."""

from candidates.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "candidates.mformer.config": ("VARIANTS", "MFormerConfig", "check_juncture"),
    "candidates.mformer.mformer": (
        "MFormerV1", "mformer_v1", "mformer_v1_lg", "mformer_v1_md", "mformer_v1_sm", "mformer_v1_xl",
    ),
    "candidates.mformer.convert": (
        "LoadReport", "load_mformer_from_state_dicts", "split_convnext_state_dict", "split_rope_vit_state_dict",
    ),
    "candidates.mformer.assembly": ("CompatRow", "build_mformer", "compat_row"),
})
