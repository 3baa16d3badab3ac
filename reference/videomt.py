"""VidEoMT pairs: our ``candidates.videomt`` against transformers' Videomt and EoMT-DINOv3.

- ``videomt`` (3-frame clips) and ``videomt_2frames``: DINOv2-style backbone with learned
  positions, registers and layer scale, against ``VideomtForUniversalSegmentation``. The query
  layers, final norm and heads run once per frame, so the trace has ``layers.2#0..#2`` etc.
- ``eomt_dinov3``: single frames, DINOv3-style backbone (RoPE, masked attention in the query
  stage), against ``EomtDinov3ForUniversalSegmentation``.
- ``videomt_small`` / ``eomt_dinov3_small`` (nightly): the same at ViT-S width (384, 12 layers, 128x128);
  ``videomt_small_224`` (nightly): ViT-S on a 3-frame 224x224 clip, the benchmark's size.

Adapters only build the upstream models, pinned to eval mode and eager attention; the weight
mappings (``convert_hf_*``, pure state-dict functions) and module-name rules (``*_RENAME``) are the
family's, in :mod:`candidates.videomt.convert`.
"""

from __future__ import annotations

import torch
from transformers import (
    EomtDinov3Config, EomtDinov3ForUniversalSegmentation, VideomtConfig, VideomtForUniversalSegmentation,
)

from candidates.videomt import (
    VidEoMT, VidEoMTConfig, videomt_dinov3_small_config, videomt_dinov3_tiny_config, videomt_small_config,
    videomt_tiny_config,
)
from candidates.videomt.convert import EOMT_DINOV3_RENAME, VIDEOMT_RENAME, convert_hf_eomt_dinov3, convert_hf_videomt
from harness import Pair, register

__all__ = ["hf_videomt", "hf_eomt_dinov3", "convert_hf_videomt", "convert_hf_eomt_dinov3"]


def _common_hf(config: VidEoMTConfig) -> dict:
    return dict(
        hidden_size=config.hidden_size, num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        image_size=config.image_size, patch_size=config.patch_size, num_channels=config.num_channels,
        num_register_tokens=config.num_register_tokens, num_queries=config.num_queries, num_blocks=config.num_blocks,
        num_labels=config.num_labels, num_upscale_blocks=config.num_upscale_blocks,
        layer_norm_eps=config.layer_norm_eps, hidden_act=config.hidden_act, attn_implementation="eager",
    )


def hf_videomt(config: VidEoMTConfig) -> VideomtForUniversalSegmentation:
    """transformers' Videomt with the architecture of ``config`` (DINOv2-style), eval, eager."""
    if config.backbone != "dinov2" or config.intermediate_size % config.hidden_size or config.masked_attention:
        raise ValueError(f"Videomt is DINOv2-style, unmasked, with an integer mlp_ratio; got {config}")
    hf = VideomtConfig(**_common_hf(config), mlp_ratio=config.intermediate_size // config.hidden_size)
    return VideomtForUniversalSegmentation(hf).eval()


def hf_eomt_dinov3(config: VidEoMTConfig) -> EomtDinov3ForUniversalSegmentation:
    """transformers' EoMT-DINOv3 with the architecture of ``config``, eval, eager."""
    if config.backbone != "dinov3" or not config.masked_attention:
        raise ValueError(f"EoMT-DINOv3 has the dinov3 backbone and masked attention; got {config}")
    hf = EomtDinov3Config(
        **_common_hf(config), intermediate_size=config.intermediate_size, query_bias=config.query_bias,
        key_bias=config.key_bias, value_bias=config.value_bias,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
    )
    return EomtDinov3ForUniversalSegmentation(hf).eval()


def _outputs(out) -> dict[str, torch.Tensor]:
    keys = ("class_queries_logits", "masks_queries_logits", "last_hidden_state")
    return {k: getattr(out, k) for k in keys}


def _video(batch: int, frames: int, size: int):
    return lambda g: torch.randn(batch, frames, 3, size, size, generator=g)


def _pair(name: str, config: VidEoMTConfig, *, reference, convert, make_inputs, rename, input_name: str, tags,
          description: str) -> Pair:
    return register(Pair(
        name=name,
        candidate=lambda: VidEoMT(config),
        reference=lambda: reference(config),
        convert=convert,
        make_inputs=make_inputs,
        rename=rename,
        reference_call=lambda model, call: model(**{input_name: call.args[0]}),
        candidate_outputs=_outputs,
        reference_outputs=_outputs,
        tags=frozenset(tags),
        description=description,
    ))


def _videomt_pair(name: str, config: VidEoMTConfig, frames: int, batch: int, tags=frozenset(), description=""):
    return _pair(name, config, reference=hf_videomt, convert=convert_hf_videomt,
                 make_inputs=_video(batch, frames, config.image_size), rename=VIDEOMT_RENAME,
                 input_name="pixel_values_videos", tags=tags, description=description)


def _eomt_dinov3_pair(name: str, config: VidEoMTConfig, batch: int, tags=frozenset(), description=""):
    return _pair(name, config, reference=hf_eomt_dinov3, convert=convert_hf_eomt_dinov3,
                 make_inputs=lambda g: torch.randn(batch, 3, config.image_size, config.image_size, generator=g),
                 rename=EOMT_DINOV3_RENAME, input_name="pixel_values", tags=tags, description=description)


# Sizes come from the candidate's config factories: one source for tests, pairs and benchmarks.
_videomt_pair("videomt", videomt_tiny_config(), frames=3, batch=2,
              description="VidEoMT (DINOv2) vs transformers Videomt, 3 frames")
_videomt_pair("videomt_2frames", videomt_tiny_config(), frames=2, batch=2,
              description="VidEoMT (DINOv2) vs Videomt, 2 frames")
_eomt_dinov3_pair("eomt_dinov3", videomt_dinov3_tiny_config(), batch=2,
                  description="VidEoMT (DINOv3, RoPE) vs EoMT-DINOv3, one frame")
_videomt_pair("videomt_small", videomt_small_config(), frames=3, batch=1, tags={"nightly"},
              description="VidEoMT ViT-S width vs Videomt, 3 frames of 128x128")
_videomt_pair("videomt_small_224", videomt_small_config(image_size=224), frames=3, batch=1, tags={"nightly"},
              description="VidEoMT ViT-S width vs Videomt, a 3-frame 224x224 clip (benchmark size)")
_eomt_dinov3_pair("eomt_dinov3_small", videomt_dinov3_small_config(), batch=1, tags={"nightly"},
                  description="VidEoMT-DINOv3 ViT-S width vs EoMT-DINOv3, 128x128")
