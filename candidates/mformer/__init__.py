"""mFormerV1: ConvNeXt trunk to stride 16 + RoPE-Mixed ViT blocks; see :mod:`.mformer`, :mod:`.convert`, :mod:`.assembly`."""

from candidates.mformer.mformer import (
    VARIANTS,
    MFormerConfig,
    MFormerV1,
    check_juncture,
    mformer_v1,
    mformer_v1_lg,
    mformer_v1_md,
    mformer_v1_sm,
    mformer_v1_xl,
)
from candidates.mformer.convert import (
    LoadReport,
    load_mformer_from_state_dicts,
    split_convnext_state_dict,
    split_rope_vit_state_dict,
)
from candidates.mformer.assembly import CompatRow, build_mformer, compat_row

__all__ = [
    "VARIANTS", "CompatRow", "LoadReport", "MFormerConfig", "MFormerV1", "build_mformer", "check_juncture",
    "compat_row", "load_mformer_from_state_dicts", "mformer_v1", "mformer_v1_lg", "mformer_v1_md",
    "mformer_v1_sm", "mformer_v1_xl", "split_convnext_state_dict", "split_rope_vit_state_dict",
]
