"""BiMamba resampler: our selective-scan mixer, the resampler, its weight layouts and self-describing checkpoints.

Names load on first use (:func:`candidates.exports.lazy_exports`): recognition imports no torch."""

from candidates.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "candidates.resampler.checkpoint": (
        "CheckpointError", "LoadedCheckpoint", "load_checkpoint", "load_weights_into", "read_weights",
        "save_checkpoint", "write_metadata",
    ),
    "candidates.resampler.config": ("VARIANTS", "ResamplerConfig"),
    "candidates.resampler.convert": (
        "MIXER_TABLE", "FieldSource", "KeyPrefix", "find_prefixes", "infer_config", "recognize", "resampler_table",
        "select_prefix",
    ),
    "candidates.resampler.mamba": ("CausalConv1d", "MambaMixer", "SelectiveScan", "selective_scan"),
    "candidates.resampler.resampler": ("BiMambaBlock", "BiMambaResampler", "bimamba_large_resampler", "bimamba_resampler"),
})
