"""The vlm family's references and pairs: DINOv3 in transformers and timm, and an independent projector.

References:
  * ``transformers.DINOv3ViTModel`` (transformers 5.23), eager attention, eval mode;
  * timm 1.0.31 ``vit_small_patch16_dinov3`` (``Eva`` + ``RotaryEmbeddingDinoV3``), eager
    attention, eval mode, called through ``forward_features`` (tokens after the final norm);
  * :class:`UnshuffleProjector`: the modality projector written with
    ``torch.nn.functional.pixel_unshuffle`` plus a channel permutation, independent of the
    candidate's reshape/permute formulation.

Pairs (``python -m harness list``), all at toy width (2 blocks, width 32, 2 heads, 4 registers):
  * ``dinov3_vit`` / ``dinov3_vit_timm``            2 x 64x64 (square grid 4x4)
  * ``dinov3_vit_rect`` / ``dinov3_vit_timm_rect``  1 x 640x960 (grid 40x60: a non-square high-resolution grid)
  * ``dinov3_vit_small`` / ``dinov3_vit_timm_small`` ViT-S/16 full size, 1 x 224x320 (nightly)
  * ``dinov3_projector``                           grid 4x8, factor 2, CLS + 4 registers dropped

The candidate reproduces each port's RoPE rounding (``rope_impl``: ``inv_freq`` for
transformers, ``periods`` for timm), so float64 parity is exact to float64 rounding.

timm computes its rotary table with ``rope.get_embed()``, not a module call; :func:`expose_rope_table`
routes it through a traced ``rope.cos_sin`` module in the candidate's ``(cos, sin)`` layout, so a
wrong table is reported at ``rope`` on both references.

Weight and module-name mappings (``TRANSFORMERS_RENAME``, ``TIMM_RENAME``, the state-dict tables)
live in :mod:`candidates.vlm.convert`.

The candidate applies its fused ``qkv`` weight as three traced projections ``attn.{q,k,v}_proj``:
they twin transformers' ``attention.{q,k,v}_proj``; timm makes one fused ``qkv`` call, so on
the timm pairs they have no twin and attention errors are localized to ``attn``.
"""

from __future__ import annotations

from dataclasses import replace

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from candidates.vlm.convert import (
    TIMM_RENAME, TRANSFORMERS_RENAME, convert_timm_state_dict, convert_transformers_state_dict,
)
from candidates.vlm.dinov3 import VARIANTS, DinoV3Config, DinoV3ViT
from candidates.vlm.projector import ModalityProjector, ProjectorConfig
from harness import Call, Pair, register

__all__ = [
    "TINY", "TINY_TIMM", "transformers_dinov3", "timm_dinov3", "expose_rope_table",
    "UnshuffleProjector",
]

TINY = replace(VARIANTS["dinov3_tiny"], rope_impl="inv_freq")  # q/v biases, as transformers' default
TINY_TIMM = replace(VARIANTS["dinov3_tiny"], qkv_bias=False, rope_impl="periods")  # as vit_small_patch16_dinov3
SQUARE, RECT = (64, 64), (640, 960)


def transformers_dinov3(config: DinoV3Config) -> nn.Module:
    """``DINOv3ViTModel`` with the architecture of ``config``; eager attention, eval mode."""
    hf = DINOv3ViTConfig(
        patch_size=config.patch_size, hidden_size=config.embed_dim, intermediate_size=config.mlp_hidden_dim,
        num_hidden_layers=config.depth, num_attention_heads=config.num_heads,
        num_register_tokens=config.num_reg_tokens, rope_theta=config.rope_theta,
        layer_norm_eps=config.norm_eps, query_bias=config.qkv_bias, key_bias=False,
        value_bias=config.qkv_bias, num_channels=config.in_chans,
    )
    hf._attn_implementation = "eager"
    return DINOv3ViTModel(hf).eval()


class RopeCosSin(nn.Module):
    """Traced view of timm's rotary table: ``[sin | cos]`` -> ``(cos, sin)`` (exact re-layout)."""

    def forward(self, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sin, cos = table.chunk(2, dim=-1)
        return cos, sin


def expose_rope_table(rope: nn.Module) -> None:
    """Route timm's ``rope.get_embed()`` through a ``rope.cos_sin`` module call (same result)."""
    rope.cos_sin = RopeCosSin()
    get_embed = rope.get_embed

    def traced_get_embed(*args, **kwargs) -> torch.Tensor:
        cos, sin = rope.cos_sin(get_embed(*args, **kwargs))
        return torch.cat([sin, cos], dim=-1)

    rope.get_embed = traced_get_embed


def timm_dinov3(config: DinoV3Config, *, variant: str = "vit_small_patch16_dinov3") -> nn.Module:
    """timm DINOv3 ``Eva`` with the architecture of ``config``; eager attention, eval mode."""
    model = timm.create_model(
        variant, pretrained=False, num_classes=0, img_size=SQUARE, patch_size=config.patch_size,
        embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio, num_reg_tokens=config.num_reg_tokens, rope_temperature=config.rope_theta,
        qkv_bias=config.qkv_bias, in_chans=config.in_chans,
    )
    for block in model.blocks:
        block.attn.fused_attn = False
    expose_rope_table(model.rope)
    return model.eval()


def _tokens(out) -> dict[str, torch.Tensor]:
    return {"last_hidden_state": out.last_hidden_state if hasattr(out, "last_hidden_state") else out}


def _images(batch: int, size: tuple[int, int]):
    return lambda g: torch.randn(batch, 3, *size, generator=g)


def _forward_features(model: nn.Module, call: Call) -> torch.Tensor:
    return model.forward_features(*call.args, **call.kwargs)


# What differs between the two upstreams' pairs: the model, the key table, the module names, the call.
_UPSTREAMS = {
    "transformers": dict(
        build=transformers_dinov3, convert=convert_transformers_state_dict, rename=TRANSFORMERS_RENAME,
    ),
    "timm": dict(
        build=timm_dinov3, convert=convert_timm_state_dict, rename=TIMM_RENAME, reference_call=_forward_features,
    ),
}


def _encoder_pair(name: str, upstream: str, config: DinoV3Config, batch: int, size: tuple[int, int], **options) -> None:
    build = _UPSTREAMS[upstream]["build"]
    register(Pair(
        name=name,
        candidate=lambda: DinoV3ViT(config),
        reference=lambda: build(config),
        make_inputs=_images(batch, size),
        candidate_outputs=_tokens,
        reference_outputs=_tokens,
        **{k: v for k, v in _UPSTREAMS[upstream].items() if k != "build"},
        **options,
    ))


for _suffix, _batch, _size in (("", 2, SQUARE), ("_rect", 1, RECT)):
    _shape = f"{_batch} x {_size[0]}x{_size[1]}"
    _encoder_pair(f"dinov3_vit{_suffix}", "transformers", TINY, _batch, _size,
                  description=f"DINOv3 ViT (toy width) vs transformers DINOv3ViTModel, {_shape}")
    _encoder_pair(f"dinov3_vit_timm{_suffix}", "timm", TINY_TIMM, _batch, _size,
                  description=f"DINOv3 ViT (toy width) vs timm vit_small_patch16_dinov3, {_shape}")

SMALL = replace(VARIANTS["vit_small_patch16_dinov3_qkvb"], rope_impl="inv_freq")
SMALL_TIMM = VARIANTS["vit_small_patch16_dinov3"]
_encoder_pair("dinov3_vit_small", "transformers", SMALL, 1, (224, 320), tags=frozenset({"nightly"}),
              description="DINOv3 ViT-S/16 vs transformers DINOv3ViTModel (default config), 1 x 224x320")
_encoder_pair("dinov3_vit_timm_small", "timm", SMALL_TIMM, 1, (224, 320), tags=frozenset({"nightly"}),
              description="DINOv3 ViT-S/16 vs timm vit_small_patch16_dinov3, 1 x 224x320")


# --------------------------------------------------------------------------- projector


class UnshufflePixels(nn.Module):
    """Space-to-depth by ``F.pixel_unshuffle``, channels permuted to ``(row, column, channel)``."""

    def forward(self, x: torch.Tensor, grid: tuple[int, int], factor: int) -> torch.Tensor:
        batch, _, dim = x.shape
        hp, wp = grid
        fmap = x.transpose(1, 2).reshape(batch, dim, hp, wp)  # (B, D, Hp, Wp)
        folded = F.pixel_unshuffle(fmap, factor)  # (B, D*s*s, Gh, Gw), channel = (d, row, col)
        gh, gw = folded.shape[-2:]
        folded = folded.reshape(batch, dim, factor, factor, gh, gw)
        return folded.permute(0, 4, 5, 2, 3, 1).reshape(batch, gh * gw, factor * factor * dim)


class UnshuffleProjector(nn.Module):
    """Reference modality projector: drop prefix tokens, :class:`UnshufflePixels`, linear."""

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        self.config = config
        self.shuffle = UnshufflePixels()
        self.proj = nn.ModuleDict({
            f"s{s}": nn.Linear(config.vision_dim * s * s, config.text_dim, bias=False) for s in config.factors
        })

    def forward(self, x: torch.Tensor, grid: tuple[int, int], *, factor: int) -> torch.Tensor:
        x = x[:, self.config.num_prefix_tokens:]
        return self.proj[f"s{factor}"](self.shuffle(x, grid, factor))


PROJECTOR = ProjectorConfig(vision_dim=8, text_dim=12, factors=(2, 4), num_prefix_tokens=5)

register(Pair(
    name="dinov3_projector",
    candidate=lambda: ModalityProjector(PROJECTOR),
    reference=lambda: UnshuffleProjector(PROJECTOR),
    convert=dict,
    make_inputs=lambda g: Call((torch.randn(2, 5 + 4 * 8, 8, generator=g), (4, 8)), {"factor": 2}),
    description="modality projector 2D pixel shuffle vs F.pixel_unshuffle formulation, grid 4x8, s=2",
))
