"""VidEoMT pairs: our ``candidates.videomt`` against transformers' Videomt and EoMT-DINOv3.

- ``videomt`` (3-frame clips) and ``videomt_2frames``: DINOv2-style backbone with learned
  positions, registers and layer scale, against ``VideomtForUniversalSegmentation``. The query
  layers, final norm and heads run once per frame, so the trace has ``layers.2#0..#2`` etc.
- ``eomt_dinov3``: single frames, DINOv3-style backbone (RoPE, masked attention in the query
  stage), against ``EomtDinov3ForUniversalSegmentation``.
- ``videomt_small`` / ``eomt_dinov3_small`` (nightly): the same at ViT-S width (384, 12 layers, 128x128);
  ``videomt_small_224`` (nightly): ViT-S on a 3-frame 224x224 clip, the benchmark's size.

Adapters only build the upstream models, pinned to eval mode and eager attention; the weight
mappings (``convert_hf_*``, pure state-dict functions) are the family's, in :mod:`candidates.videomt.convert`.
"""

from __future__ import annotations

import torch
from transformers import (
    EomtDinov3Config, EomtDinov3ForUniversalSegmentation, VideomtConfig, VideomtForUniversalSegmentation,
)

from candidates.videomt import (
    VidEoMT, VidEoMTConfig, videomt_dinov3_tiny_config, videomt_small_config, videomt_tiny_config,
)
from candidates.videomt.convert import convert_hf_eomt_dinov3, convert_hf_videomt
from harness import Pair, register

__all__ = ["hf_videomt", "hf_eomt_dinov3", "convert_hf_videomt", "convert_hf_eomt_dinov3"]


def _common_hf(cfg: VidEoMTConfig) -> dict:
    return dict(
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=cfg.num_channels,
        num_register_tokens=cfg.num_register_tokens, num_queries=cfg.num_queries, num_blocks=cfg.num_blocks,
        num_labels=cfg.num_labels, num_upscale_blocks=cfg.num_upscale_blocks, layer_norm_eps=cfg.layer_norm_eps,
        hidden_act=cfg.hidden_act, attn_implementation="eager",
    )


def hf_videomt(cfg: VidEoMTConfig) -> VideomtForUniversalSegmentation:
    """transformers' Videomt with the architecture of ``cfg`` (DINOv2-style), eval, eager."""
    if cfg.backbone != "dinov2" or cfg.intermediate_size % cfg.hidden_size or cfg.masked_attention:
        raise ValueError(f"Videomt is DINOv2-style, unmasked, with an integer mlp_ratio; got {cfg}")
    hf = VideomtConfig(**_common_hf(cfg), mlp_ratio=cfg.intermediate_size // cfg.hidden_size)
    return VideomtForUniversalSegmentation(hf).eval()


def hf_eomt_dinov3(cfg: VidEoMTConfig) -> EomtDinov3ForUniversalSegmentation:
    """transformers' EoMT-DINOv3 with the architecture of ``cfg``, eval, eager."""
    if cfg.backbone != "dinov3" or not cfg.masked_attention:
        raise ValueError(f"EoMT-DINOv3 has the dinov3 backbone and masked attention; got {cfg}")
    hf = EomtDinov3Config(
        **_common_hf(cfg), intermediate_size=cfg.intermediate_size, query_bias=cfg.query_bias,
        key_bias=cfg.key_bias, value_bias=cfg.value_bias,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
    )
    return EomtDinov3ForUniversalSegmentation(hf).eval()


# Candidate module names -> reference names, where they differ.
VIDEOMT_RENAME = (
    (r"^embeddings\.patch_embed", "embeddings.patch_embeddings"),
    (r"\.mlp\.act$", ".mlp.activation_fn"),
)
EOMT_DINOV3_RENAME = (
    (r"^embeddings\.patch_embed\.projection$", "embeddings.patch_embeddings"),
    (r"\.attention\.out_proj$", ".attention.o_proj"),
    (r"\.mlp\.fc1$", ".mlp.up_proj"),
    (r"\.mlp\.fc2$", ".mlp.down_proj"),
    (r"\.mlp\.act$", ".mlp.act_fn"),
)


def _outputs(out) -> dict[str, torch.Tensor]:
    keys = ("class_queries_logits", "masks_queries_logits", "last_hidden_state")
    return {k: getattr(out, k) for k in keys}


def _video(batch: int, frames: int, size: int):
    return lambda g: torch.randn(batch, frames, 3, size, size, generator=g)


def _pair(name: str, cfg: VidEoMTConfig, *, reference, convert, make_inputs, rename, input_name: str, tags,
          description: str) -> Pair:
    return register(Pair(
        name=name,
        candidate=lambda: VidEoMT(cfg),
        reference=lambda: reference(cfg),
        convert=convert,
        make_inputs=make_inputs,
        rename=rename,
        reference_call=lambda model, call: model(**{input_name: call.args[0]}),
        candidate_outputs=_outputs,
        reference_outputs=_outputs,
        tags=frozenset(tags),
        description=description,
    ))


def _videomt_pair(name: str, cfg: VidEoMTConfig, frames: int, batch: int, tags=frozenset(), description=""):
    return _pair(name, cfg, reference=hf_videomt, convert=convert_hf_videomt,
                 make_inputs=_video(batch, frames, cfg.image_size), rename=VIDEOMT_RENAME,
                 input_name="pixel_values_videos", tags=tags, description=description)


def _eomt_dinov3_pair(name: str, cfg: VidEoMTConfig, batch: int, tags=frozenset(), description=""):
    return _pair(name, cfg, reference=hf_eomt_dinov3, convert=convert_hf_eomt_dinov3,
                 make_inputs=lambda g: torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g),
                 rename=EOMT_DINOV3_RENAME, input_name="pixel_values", tags=tags, description=description)


# Sizes come from the candidate's config factories: one source for tests, pairs and benchmarks.
_DINOV3 = dict(backbone="dinov3", key_bias=False, masked_attention=True)
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
_eomt_dinov3_pair("eomt_dinov3_small", videomt_small_config(**_DINOV3), batch=1, tags={"nightly"},
                  description="VidEoMT-DINOv3 ViT-S width vs EoMT-DINOv3, 128x128")
