"""mFormerV1: ConvNeXt trunk to stride 16 + RoPE-Mixed ViT blocks; see :mod:`.mformer`."""

from candidates.mformer.mformer import (
    MFORMER_VARIANTS,
    LoadReport,
    MFormerConfig,
    MFormerV1,
    check_juncture,
    load_mformer_from_state_dicts,
    mformer_v1,
    mformer_v1_lg,
    mformer_v1_md,
    mformer_v1_sm,
    mformer_v1_xl,
    split_convnext_state_dict,
    split_rope_vit_state_dict,
)

__all__ = [
    "MFORMER_VARIANTS", "LoadReport", "MFormerConfig", "MFormerV1", "check_juncture",
    "load_mformer_from_state_dicts", "mformer_v1", "mformer_v1_lg", "mformer_v1_md",
    "mformer_v1_sm", "mformer_v1_xl", "split_convnext_state_dict", "split_rope_vit_state_dict",
]
