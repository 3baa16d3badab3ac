"""BiMamba resampler: our selective-scan mixer, the resampler and its self-describing checkpoints."""

from candidates.resampler.checkpoint import (
    CheckpointError, FieldSource, LoadedCheckpoint, infer_config, load_checkpoint, load_weights_into,
    read_weights, save_checkpoint, write_metadata,
)
from candidates.resampler.mamba import MambaMixer, selective_scan
from candidates.resampler.resampler import (
    PRESETS, BiMambaBlock, BiMambaResampler, ResamplerConfig, bimamba_resampler,
)

__all__ = [
    "PRESETS", "BiMambaBlock", "BiMambaResampler", "CheckpointError", "FieldSource", "LoadedCheckpoint",
    "MambaMixer", "ResamplerConfig", "bimamba_resampler", "infer_config", "load_checkpoint",
    "load_weights_into", "read_weights", "save_checkpoint", "selective_scan", "write_metadata",
]
