"""VidEoMT video segmentation (DINOv2- and DINOv3-style backbones); its weight mappings are in
:mod:`candidates.videomt.convert`."""

from candidates.videomt.videomt import (
    VARIANTS, QueryPropagation, VidEoMT, VidEoMTConfig, VidEoMTOutput, videomt_dinov3_small,
    videomt_dinov3_small_config, videomt_dinov3_tiny, videomt_dinov3_tiny_config, videomt_small,
    videomt_small_config, videomt_tiny, videomt_tiny_config,
)

__all__ = ["VARIANTS", "QueryPropagation", "VidEoMT", "VidEoMTConfig", "VidEoMTOutput", "videomt_dinov3_small",
           "videomt_dinov3_small_config", "videomt_dinov3_tiny", "videomt_dinov3_tiny_config", "videomt_small",
           "videomt_small_config", "videomt_tiny", "videomt_tiny_config"]
