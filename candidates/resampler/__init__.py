"""BiMamba resampler: our selective-scan mixer, the resampler and its self-describing checkpoints."""

from candidates.resampler.checkpoint import (
    CheckpointError, FieldSource, KeyPrefix, LoadedCheckpoint, find_prefixes, infer_config, load_checkpoint,
    load_weights_into, read_weights, save_checkpoint, select_prefix, write_metadata,
)
from candidates.resampler.mamba import CausalConv1d, MambaMixer, SelectiveScan, selective_scan
from candidates.resampler.resampler import (
    PRESETS, BiMambaBlock, BiMambaResampler, ResamplerConfig, bimamba_resampler,
)

__all__ = [
    "PRESETS", "BiMambaBlock", "BiMambaResampler", "CausalConv1d", "CheckpointError", "FieldSource", "KeyPrefix",
    "LoadedCheckpoint", "MambaMixer", "ResamplerConfig", "SelectiveScan", "bimamba_resampler", "find_prefixes",
    "infer_config", "load_checkpoint", "load_weights_into", "read_weights", "save_checkpoint", "select_prefix",
    "selective_scan", "write_metadata",
]
