"""BiMamba resampler: our selective-scan mixer, the resampler, its weight layouts and self-describing checkpoints."""

from candidates.resampler.checkpoint import (
    CheckpointError, LoadedCheckpoint, load_checkpoint, load_weights_into, read_weights, save_checkpoint,
    write_metadata,
)
from candidates.resampler.convert import (
    MIXER_TABLE, FieldSource, KeyPrefix, find_prefixes, infer_config, recognize, resampler_table, select_prefix,
)
from candidates.resampler.mamba import CausalConv1d, MambaMixer, SelectiveScan, selective_scan
from candidates.resampler.resampler import (
    VARIANTS, BiMambaBlock, BiMambaResampler, ResamplerConfig, bimamba_large_resampler, bimamba_resampler,
)

__all__ = [
    "MIXER_TABLE", "VARIANTS", "BiMambaBlock", "BiMambaResampler", "CausalConv1d", "CheckpointError", "FieldSource",
    "KeyPrefix", "LoadedCheckpoint", "MambaMixer", "ResamplerConfig", "SelectiveScan", "bimamba_large_resampler",
    "bimamba_resampler", "find_prefixes", "infer_config", "load_checkpoint", "load_weights_into", "read_weights",
    "recognize", "resampler_table", "save_checkpoint", "select_prefix", "selective_scan", "write_metadata",
]
