"""Convert the official VidEoMT DINOv3 release layout into :class:`VidEoMT` (``backbone="dinov3"``).

Upstream (``tue-mps/videomt``, ``videomt/modeling/backbone/vit.py`` and ``videomt.py``, commit
5d3f0a4): a DINOv3 backbone is transformers' ``DINOv3ViTModel`` patched to look like a timm ViT:
its ``embeddings`` module is re-registered as ``patch_embed`` (and its ``mask_token`` deleted),
``layer`` as ``blocks``. The release's keys are therefore transformers' DINOv3 names under
detectron2's ``backbone.encoder.backbone.``, next to the same heads as the DINOv2 release::

    backbone.encoder.backbone.patch_embed.{cls_token (1, 1, D), register_tokens (1, R, D)}
    backbone.encoder.backbone.patch_embed.patch_embeddings.{weight (D, C, p, p), bias}
    backbone.encoder.backbone.blocks.{i}.{norm1, norm2}.{weight, bias}
    backbone.encoder.backbone.blocks.{i}.attention.{q_proj, v_proj, o_proj}.{weight, bias}, k_proj.weight
    backbone.encoder.backbone.blocks.{i}.layer_scale{1, 2}.lambda1
    backbone.encoder.backbone.blocks.{i}.mlp.{up_proj, down_proj}.{weight, bias}
    backbone.encoder.backbone.norm.{weight, bias}
    backbone.q.weight, backbone.query_updater.*, backbone.class_head.*, backbone.mask_head.{0,2,4}.*
    backbone.upscale.{i}.{conv1, conv2, norm}.*, backbone.attn_mask_probs, criterion.empty_weight

There is no ``pos_embed``: positions come from RoPE, whose periods are a non-persistent buffer.
So ``rope_theta`` and ``image_size`` (our mask grid is fixed) are required arguments, with the
heads, LayerNorm eps and activation. VidEoMT never masks attention: ``masked_attention=False``.

The key bias. DINOv3 has none (transformers: ``key_bias=False``; Meta's original masks it). Two
forms of the projections are read:

- split (as released): no ``k_proj.bias`` key means ``key_bias=False``; a present one is carried.
- fused ``attention.qkv_proj`` (upstream's ``FUSED_QKV`` speed option builds it in place; a fused
  model saved as is has it): upstream writes zeros for the missing key bias. An all-zero
  segment is dropped (adding zero is exact); a nonzero one is carried, never dropped: with RoPE
  a key bias is rotated per patch, so softmax does not cancel it.

Not supported (clear ``ValueError``): the gated-MLP DINOv3 variants (``mlp.gate_proj``, ViT-S+/H+)
and the EoMT-DINOv3 release (``network.*``), whose backbone tensors are deltas from DINOv3's
pretrained weights and mean nothing without them.
"""

from __future__ import annotations

import os
import re

import torch

from candidates.io import load_state_dict, naming_file
from candidates.videomt.convert import ConversionReport, build_converted, head_fields, save_upstream
from candidates.videomt.videomt import VidEoMT, VidEoMTConfig

__all__ = ["is_dinov3_layout", "infer_config_dinov3", "convert_upstream_dinov3", "to_upstream_dinov3",
           "load_upstream_dinov3", "read_checkpoint", "save_upstream"]

StateDict = dict[str, torch.Tensor]
VIT = "backbone.encoder.backbone."

# (upstream template, candidate template): "{}" is a layer/block index; a template ending in "."
# is a prefix (weight and bias alike), any other is a whole key. Read both ways.
_TABLE = (
    (f"{VIT}patch_embed.cls_token", "embeddings.cls_token"),
    (f"{VIT}patch_embed.register_tokens", "embeddings.register_tokens"),
    (f"{VIT}patch_embed.patch_embeddings.", "embeddings.patch_embed.projection."),
    (f"{VIT}blocks.{{}}.norm1.", "layers.{}.norm1."),
    (f"{VIT}blocks.{{}}.norm2.", "layers.{}.norm2."),
    (f"{VIT}blocks.{{}}.attention.q_proj.", "layers.{}.attention.q_proj."),
    (f"{VIT}blocks.{{}}.attention.k_proj.", "layers.{}.attention.k_proj."),
    (f"{VIT}blocks.{{}}.attention.v_proj.", "layers.{}.attention.v_proj."),
    (f"{VIT}blocks.{{}}.attention.o_proj.", "layers.{}.attention.out_proj."),
    (f"{VIT}blocks.{{}}.layer_scale1.lambda1", "layers.{}.layer_scale1.lambda1"),
    (f"{VIT}blocks.{{}}.layer_scale2.lambda1", "layers.{}.layer_scale2.lambda1"),
    (f"{VIT}blocks.{{}}.mlp.up_proj.", "layers.{}.mlp.fc1."),
    (f"{VIT}blocks.{{}}.mlp.down_proj.", "layers.{}.mlp.fc2."),
    (f"{VIT}norm.", "layernorm."),
    ("backbone.q.weight", "query.weight"),
    ("backbone.query_updater.", "query_updater."),
    ("backbone.class_head.", "class_predictor."),
    ("backbone.mask_head.0.", "mask_head.fc1."),
    ("backbone.mask_head.2.", "mask_head.fc2."),
    ("backbone.mask_head.4.", "mask_head.fc3."),
    ("backbone.upscale.{}.conv1.", "upscale_block.block.{}.conv1."),
    ("backbone.upscale.{}.conv2.", "upscale_block.block.{}.conv2."),
    ("backbone.upscale.{}.norm.", "upscale_block.block.{}.layernorm2d."),
    ("backbone.attn_mask_probs", "attn_mask_probs"),
)
_FUSED = re.compile(rf"^{re.escape(VIT)}blocks\.(\d+)\.attention\.qkv_proj\.(weight|bias)$")
_CANDIDATE_QKV = re.compile(r"^layers\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$")
_BLOCK = re.compile(rf"^{re.escape(VIT)}blocks\.(\d+)\.norm1\.weight$")

# A state dict from a checkpoint file: bare, or under ``model`` (detectron2), ``state_dict`` and the
# other wrappers :func:`candidates.io.load_state_dict` unwraps. Kept under the name this module exports.
read_checkpoint = load_state_dict


def _compile(source: str, target: str) -> tuple[re.Pattern, str]:
    pattern = "^" + re.escape(source).replace(r"\{\}", r"(\d+)") + ("" if source.endswith(".") else "$")
    return re.compile(pattern), target.replace("{}", r"\1")


_FORWARD = tuple(_compile(up, cand) for up, cand in _TABLE)
_BACKWARD = tuple(_compile(cand, up) for up, cand in _TABLE)


def _rename(key: str, rules) -> str | None:
    for pattern, replacement in rules:
        new, n = pattern.subn(replacement, key)
        if n:
            return new
    return None


def is_dinov3_layout(state: StateDict) -> bool:
    """True for the VidEoMT DINOv3 release layout (DINOv3's patch embeddings, no ``pos_embed``)."""
    return f"{VIT}patch_embed.patch_embeddings.weight" in state


def _require(state: StateDict, key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"not a VidEoMT DINOv3 checkpoint: key {key!r} is missing "
                         f"({len(state)} keys, e.g. {sorted(state)[:3]})")
    return state[key]


def _qkv_biases(state: StateDict, hidden: int) -> tuple[bool, bool, bool]:
    """Which of q/k/v carry a bias, the same in every block (split keys, or nonzero fused segments)."""
    per_block: dict[int, tuple[bool, bool, bool]] = {}
    for key in state:
        if (m := _BLOCK.match(key)) is None:
            continue
        i = int(m.group(1))
        attn = f"{VIT}blocks.{i}.attention."
        fused = state.get(f"{attn}qkv_proj.bias")
        if f"{attn}qkv_proj.weight" in state and f"{attn}q_proj.weight" in state:
            raise ValueError(f"block {i} has both fused qkv_proj and split q/k/v projections")
        if f"{attn}qkv_proj.weight" in state:
            segments = fused.split(hidden) if fused is not None else (None,) * 3
            per_block[i] = tuple(bool(s is not None and s.ne(0).any()) for s in segments)
        else:
            per_block[i] = tuple(f"{attn}{n}_proj.bias" in state for n in "qkv")
    if len(set(per_block.values())) > 1:
        raise ValueError(f"q/k/v bias presence must be the same in every block, got {per_block}")
    return next(iter(per_block.values()), (True, True, True))


def infer_config_dinov3(
    state: StateDict, *, num_heads: int, layer_norm_eps: float, hidden_act: str, rope_theta: float,
    image_size: int,
) -> VidEoMTConfig:
    """The architecture read off the checkpoint; what it cannot tell is a required argument."""
    if any(k.startswith("network.encoder.backbone.") for k in state):
        raise ValueError("this is the EoMT-DINOv3 release layout (network.*): its backbone tensors are "
                         "deltas from DINOv3's pretrained weights; merge them first, then rename to backbone.*")
    patch = _require(state, f"{VIT}patch_embed.patch_embeddings.weight")  # (D, C, p, p)
    if patch.shape[-1] != patch.shape[-2]:
        raise ValueError(f"need square patches, got patch kernel {tuple(patch.shape[-2:])}")
    if gated := sorted(k for k in state if ".mlp.gate_proj." in k)[:1]:
        raise ValueError(f"gated-MLP (SwiGLU) DINOv3 backbones are not supported by the candidate, got {gated[0]!r}")
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK.match(k))}
    query_bias, key_bias, value_bias = _qkv_biases(state, patch.shape[0])
    return VidEoMTConfig(
        backbone="dinov3",
        hidden_size=patch.shape[0],
        num_layers=len(blocks),
        num_heads=num_heads,
        intermediate_size=_require(state, f"{VIT}blocks.0.mlp.up_proj.weight").shape[0],
        patch_size=patch.shape[-1],
        image_size=image_size,
        num_channels=patch.shape[1],
        num_register_tokens=_require(state, f"{VIT}patch_embed.register_tokens").shape[1],
        **head_fields(state),
        layer_norm_eps=layer_norm_eps,
        hidden_act=hidden_act,
        query_bias=query_bias, key_bias=key_bias, value_bias=value_bias,
        rope_theta=rope_theta,
        masked_attention=False,
    )


def convert_upstream_dinov3(state: StateDict, cfg: VidEoMTConfig) -> tuple[StateDict, ConversionReport]:
    """Upstream DINOv3-layout state dict -> (candidate state dict for ``cfg``, report). Pure; the
    report lists what was not carried over (a nonzero fused bias segment the config lacks too)."""
    if cfg.backbone != "dinov3":
        raise ValueError(f"the DINOv3 release layout needs a dinov3 config, got backbone={cfg.backbone!r}")
    expected = VidEoMT(cfg).state_dict()
    out: StateDict = {}
    source: dict[str, str] = {}  # candidate key -> the upstream key (or fused segment) it came from
    report = ConversionReport()
    for key, value in state.items():
        if (m := _FUSED.match(key)) is not None:
            i, kind = m.groups()
            for name, part in zip("qkv", value.chunk(3, dim=0)):  # (3D, ...) -> three (D, ...)
                target = f"layers.{i}.attention.{name}_proj.{kind}"
                if kind == "bias" and target not in expected and not part.ne(0).any():
                    continue  # upstream's zero fill for a bias this model does not have: exact to drop
                out[target], source[target] = part.clone(), f"{key}[{name}]"
        elif (new := _rename(key, _FORWARD)) is not None:
            out[new], source[new] = value.clone(), key
        else:
            report.unconverted_source.append(key)
    report.missing_target = sorted(set(expected) - set(out))
    for key in sorted(set(out) - set(expected)):
        report.unconverted_source.append(source[key])  # renamed to a key this config does not have
        del out[key]
    report.shape_mismatches = [(k, tuple(out[k].shape), tuple(expected[k].shape))
                               for k in out if out[k].shape != expected[k].shape]
    return out, report


def to_upstream_dinov3(state: StateDict, *, fused_qkv: bool = False) -> StateDict:
    """Candidate (dinov3) state dict -> upstream layout; inverse of :func:`convert_upstream_dinov3`.

    ``fused_qkv`` writes ``attention.qkv_proj`` as upstream's fusion does (zeros for absent biases).
    """
    out: StateDict = {}
    for key, value in state.items():
        if (m := _CANDIDATE_QKV.match(key)) is not None and fused_qkv:
            i, _, kind = m.groups()
            fused = f"{VIT}blocks.{i}.attention.qkv_proj.{kind}"
            if fused not in out:
                weight = state[f"layers.{i}.attention.q_proj.weight"]
                parts = [state.get(f"layers.{i}.attention.{n}_proj.{kind}") for n in "qkv"]
                zeros = torch.zeros(weight.shape[0], dtype=weight.dtype)
                out[fused] = torch.cat([zeros if p is None else p for p in parts], dim=0)  # (3D, ...)
        elif (new := _rename(key, _BACKWARD)) is not None:
            out[new] = value.clone()
        else:
            raise ValueError(f"no upstream DINOv3-layout name for candidate key {key!r} "
                             "(a dinov2 model? use candidates.videomt.convert.to_upstream)")
    return out


def load_upstream_dinov3(
    path: str | os.PathLike, *, num_heads: int, layer_norm_eps: float, hidden_act: str, rope_theta: float,
    image_size: int, strict: bool = True,
) -> tuple[VidEoMT, ConversionReport]:
    """Read an upstream DINOv3-layout ``.pth``, infer the config, build and load the model.

    ``strict`` raises a ValueError with the report when anything beyond the documented leftovers
    (``criterion.empty_weight``) was not converted.
    """
    state = load_state_dict(path)
    with naming_file(path):  # a foreign checkpoint's missing keys are reported with the file
        cfg = infer_config_dinov3(state, num_heads=num_heads, layer_norm_eps=layer_norm_eps, hidden_act=hidden_act,
                                  rope_theta=rope_theta, image_size=image_size)
        return build_converted(cfg, *convert_upstream_dinov3(state, cfg), path=path, strict=strict)
