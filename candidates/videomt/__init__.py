"""VidEoMT video segmentation (DINOv2- and DINOv3-style backbones) and its checkpoint conversion."""

from candidates.videomt.videomt import (
    VidEoMT, VidEoMTConfig, VidEoMTOutput, videomt_dinov3_tiny, videomt_small, videomt_tiny,
)

__all__ = ["VidEoMT", "VidEoMTConfig", "VidEoMTOutput", "videomt_dinov3_tiny", "videomt_small", "videomt_tiny"]
