"""Convert the official VidEoMT release (``tue-mps/videomt`` ``.pth``) into :class:`VidEoMT`.

This module reads the DINOv2-style release; the DINOv3 release (RoPE) is read by
:mod:`candidates.videomt.convert_dinov3`.

Upstream layout (DINOv2-style timm ViT inside the EoMT wrapper)::

    backbone.encoder.backbone.{cls_token, reg_token, pos_embed (1, N, D)}
    backbone.encoder.backbone.patch_embed.proj.{weight, bias}
    backbone.encoder.backbone.blocks.{i}.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}
    backbone.encoder.backbone.norm.{weight, bias}
    backbone.q.weight, backbone.query_updater.*, backbone.class_head.*, backbone.mask_head.{0,2,4}.*
    backbone.upscale.{i}.{conv1, conv2, norm}.*, backbone.attn_mask_probs, criterion.empty_weight

The fused ``attn.qkv`` is split into q/k/v projections, weights *and all three biases* (a dropped
key bias is a silent error: the model still runs). The config is read off the tensor shapes;
what the shapes cannot tell (heads, LayerNorm eps, activation) must be passed. Every conversion
returns a :class:`ConversionReport` listing unconverted source keys, missing target keys and
shape mismatches; ``criterion.empty_weight`` (a loss buffer) is the one documented leftover and
``embeddings.mask_token`` (upstream has none; only used with ``bool_masked_pos``) is filled with
zeros and listed as such.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import torch

from candidates.io import load_state_dict, naming_file, write_atomically
from candidates.videomt.videomt import VidEoMT, VidEoMTConfig

__all__ = ["ConversionReport", "infer_config", "convert_upstream", "to_upstream", "load_upstream",
           "build_converted", "save_upstream", "DOCUMENTED_UNCONVERTED", "FILLED_TARGETS"]

StateDict = dict[str, torch.Tensor]
VIT = "backbone.encoder.backbone."
DOCUMENTED_UNCONVERTED = frozenset({"criterion.empty_weight"})
FILLED_TARGETS = {"embeddings.mask_token": "zeros: upstream has no mask token"}

# (upstream regex, candidate replacement) for everything but the fused qkv and the tokens.
_RULES = (
    (rf"^{re.escape(VIT)}patch_embed\.proj\.", "embeddings.patch_embed.projection."),
    (rf"^{re.escape(VIT)}blocks\.(\d+)\.norm(\d)\.", r"layers.\1.norm\2."),
    (rf"^{re.escape(VIT)}blocks\.(\d+)\.attn\.proj\.", r"layers.\1.attention.out_proj."),
    (rf"^{re.escape(VIT)}blocks\.(\d+)\.ls(\d)\.gamma$", r"layers.\1.layer_scale\2.lambda1"),
    (rf"^{re.escape(VIT)}blocks\.(\d+)\.mlp\.fc(\d)\.", r"layers.\1.mlp.fc\2."),
    (rf"^{re.escape(VIT)}norm\.", "layernorm."),
    (rf"^{re.escape(VIT)}cls_token$", "embeddings.cls_token"),
    (rf"^{re.escape(VIT)}reg_token$", "embeddings.register_tokens"),
    (r"^backbone\.q\.weight$", "query.weight"),
    (r"^backbone\.query_updater\.", "query_updater."),
    (r"^backbone\.class_head\.", "class_predictor."),
    (r"^backbone\.mask_head\.0\.", "mask_head.fc1."),
    (r"^backbone\.mask_head\.2\.", "mask_head.fc2."),
    (r"^backbone\.mask_head\.4\.", "mask_head.fc3."),
    (r"^backbone\.upscale\.(\d+)\.conv(\d)\.", r"upscale_block.block.\1.conv\2."),
    (r"^backbone\.upscale\.(\d+)\.norm\.", r"upscale_block.block.\1.layernorm2d."),
    (r"^backbone\.attn_mask_probs$", "attn_mask_probs"),
)
_QKV = re.compile(rf"^{re.escape(VIT)}blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
_POS = f"{VIT}pos_embed"


@dataclass
class ConversionReport:
    """What a conversion did not carry over. ``clean`` means only the documented leftovers."""

    unconverted_source: list[str] = field(default_factory=list)
    missing_target: list[str] = field(default_factory=list)
    shape_mismatches: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, got, expected)
    filled: dict[str, str] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return (set(self.unconverted_source) <= DOCUMENTED_UNCONVERTED and not self.missing_target
                and not self.shape_mismatches)

    def format(self) -> str:
        lines = [f"unconverted source keys ({len(self.unconverted_source)}): {self.unconverted_source}",
                 f"missing target keys ({len(self.missing_target)}): {self.missing_target}",
                 f"shape mismatches ({len(self.shape_mismatches)}): {self.shape_mismatches}",
                 f"filled: {self.filled}"]
        return "\n".join(lines)


def _require(state: StateDict, key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"not an upstream VidEoMT checkpoint: key {key!r} is missing "
                         f"({len(state)} keys, e.g. {sorted(state)[:3]})")
    return state[key]


def infer_config(state: StateDict, *, num_heads: int, layer_norm_eps: float, hidden_act: str) -> VidEoMTConfig:
    """The architecture read off the shapes; heads, eps and activation are not in the shapes."""
    if f"{VIT}patch_embed.patch_embeddings.weight" in state:
        raise ValueError("this is the DINOv3 release layout (RoPE, no pos_embed): use "
                         "candidates.videomt.convert_dinov3.infer_config_dinov3")
    patch = _require(state, f"{VIT}patch_embed.proj.weight")  # (D, C, p, p)
    if patch.ndim != 4 or patch.shape[-1] != patch.shape[-2]:
        raise ValueError(f"{VIT}patch_embed.proj.weight must be (D, C, p, p) with square patches, got "
                         f"{tuple(patch.shape)}")
    grid = _pos_grid(_require(state, _POS), hidden=patch.shape[0])
    blocks = {int(m.group(1)) for k in state if (m := _QKV.match(k))}
    has_bias = f"{VIT}blocks.0.attn.qkv.bias" in state
    reg = state.get(f"{VIT}reg_token")
    return VidEoMTConfig(
        backbone="dinov2",
        hidden_size=patch.shape[0],
        num_layers=len(blocks),
        num_heads=num_heads,
        intermediate_size=_require(state, f"{VIT}blocks.0.mlp.fc1.weight").shape[0],
        patch_size=patch.shape[-1],
        image_size=grid * patch.shape[-1],
        num_channels=patch.shape[1],
        num_register_tokens=0 if reg is None else reg.shape[1],
        **head_fields(state),
        layer_norm_eps=layer_norm_eps,
        hidden_act=hidden_act,
        query_bias=has_bias, key_bias=has_bias, value_bias=has_bias,
    )


def head_fields(state: StateDict) -> dict[str, int]:
    """Config fields of the segmentation head, stored alike in the DINOv2 and DINOv3 releases."""
    upscales = {int(m.group(1)) for k in state if (m := re.match(r"^backbone\.upscale\.(\d+)\.", k))}
    return dict(
        num_queries=_require(state, "backbone.q.weight").shape[0],
        num_blocks=_require(state, "backbone.attn_mask_probs").shape[0],
        num_labels=_require(state, "backbone.class_head.weight").shape[0] - 1,  # + "no object"
        num_upscale_blocks=len(upscales),
    )


def _pos_grid(pos: torch.Tensor, *, hidden: int) -> int:
    """Side of the square patch grid of a (1, N, D) ``pos_embed``, which has no CLS slot."""
    expected = f"(1, N, {hidden}) with N = grid**2 patch positions and no CLS slot"
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != hidden:
        raise ValueError(f"{_POS} must be {expected}, got {tuple(pos.shape)}")
    n = pos.shape[1]
    grid = math.isqrt(n)
    if n > 0 and grid * grid == n:
        return grid
    if n > 1 and math.isqrt(n - 1) ** 2 == n - 1:
        hint = (f"N = {n} = 1 + {math.isqrt(n - 1)}**2 looks like a grid plus a CLS slot, "
                "which this layout does not have")
    else:
        hint = f"N = {n} is not a square number"
    raise ValueError(f"{_POS} must be {expected}, got {tuple(pos.shape)}: {hint}")


def _rename(key: str) -> str | None:
    for pattern, replacement in _RULES:
        new, n = re.subn(pattern, replacement, key)
        if n:
            return new
    return None


def convert_upstream(state: StateDict, cfg: VidEoMTConfig) -> tuple[StateDict, ConversionReport]:
    """Upstream state dict -> (candidate state dict for ``cfg``, report). Pure; never raises on
    leftovers: the report lists them and loading strictly is the caller's choice."""
    out: StateDict = {}
    source: dict[str, str] = {}  # candidate key -> the upstream key it came from
    report = ConversionReport()
    for key, value in state.items():
        if (m := _QKV.match(key)) is not None:
            q, k, v = value.chunk(3, dim=0)  # (3D, ...) -> three (D, ...); biases included
            for name, part in zip("qkv", (q, k, v)):
                out[f"layers.{m.group(1)}.attention.{name}_proj.{m.group(2)}"] = part.clone()
                source[f"layers.{m.group(1)}.attention.{name}_proj.{m.group(2)}"] = key
        elif key == _POS:
            out["embeddings.position_embeddings"] = value.reshape(value.shape[-2], value.shape[-1]).clone()
            source["embeddings.position_embeddings"] = key
        elif (new := _rename(key)) is not None:
            out[new], source[new] = value.clone(), key
        else:
            report.unconverted_source.append(key)
    expected = VidEoMT(cfg).state_dict()
    for key, reason in FILLED_TARGETS.items():
        if key in expected and key not in out:
            out[key] = torch.zeros_like(expected[key])
            report.filled[key] = reason
    report.missing_target = sorted(set(expected) - set(out))
    for key in sorted(set(out) - set(expected)):
        report.unconverted_source.append(source[key])  # renamed to a key this config does not have
        del out[key]
    report.shape_mismatches = [(k, tuple(out[k].shape), tuple(expected[k].shape))
                               for k in out if out[k].shape != expected[k].shape]
    return out, report


def to_upstream(state: StateDict) -> StateDict:
    """Candidate (DINOv2-style) state dict -> upstream layout; inverse of :func:`convert_upstream`."""
    out: StateDict = {}
    for key, value in state.items():
        if key in FILLED_TARGETS:
            continue
        if (m := re.match(r"^layers\.(\d+)\.attention\.[qkv]_proj\.(weight|bias)$", key)):
            i, kind = m.groups()
            parts = [state.get(f"layers.{i}.attention.{n}_proj.{kind}") for n in "qkv"]
            if any(p is None for p in parts):
                raise ValueError(f"upstream's fused qkv needs q, k and v {kind} tensors alike; layer {i} has "
                                 f"{[n for n, p in zip('qkv', parts) if p is not None]} only")
            out[f"{VIT}blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)  # (3D, ...)
        elif key == "embeddings.position_embeddings":
            out[_POS] = value[None].clone()  # (N, D) -> (1, N, D)
        else:
            out[_inverse_name(key)] = value.clone()
    return out


_INVERSE = (
    (r"^embeddings\.patch_embed\.projection\.", f"{VIT}patch_embed.proj."),
    (r"^layers\.(\d+)\.norm(\d)\.", rf"{VIT}blocks.\1.norm\2."),
    (r"^layers\.(\d+)\.attention\.out_proj\.", rf"{VIT}blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.layer_scale(\d)\.lambda1$", rf"{VIT}blocks.\1.ls\2.gamma"),
    (r"^layers\.(\d+)\.mlp\.fc(\d)\.", rf"{VIT}blocks.\1.mlp.fc\2."),
    (r"^layernorm\.", f"{VIT}norm."),
    (r"^embeddings\.cls_token$", f"{VIT}cls_token"),
    (r"^embeddings\.register_tokens$", f"{VIT}reg_token"),
    (r"^query\.weight$", "backbone.q.weight"),
    (r"^query_updater\.", "backbone.query_updater."),
    (r"^class_predictor\.", "backbone.class_head."),
    (r"^mask_head\.fc1\.", "backbone.mask_head.0."),
    (r"^mask_head\.fc2\.", "backbone.mask_head.2."),
    (r"^mask_head\.fc3\.", "backbone.mask_head.4."),
    (r"^upscale_block\.block\.(\d+)\.conv(\d)\.", r"backbone.upscale.\1.conv\2."),
    (r"^upscale_block\.block\.(\d+)\.layernorm2d\.", r"backbone.upscale.\1.norm."),
    (r"^attn_mask_probs$", "backbone.attn_mask_probs"),
)


def _inverse_name(key: str) -> str:
    for pattern, replacement in _INVERSE:
        new, n = re.subn(pattern, replacement, key)
        if n:
            return new
    raise ValueError(f"no upstream name for candidate key {key!r} (a dinov3 model? use "
                     "candidates.videomt.convert_dinov3.to_upstream_dinov3)")


def load_upstream(
    path: str | os.PathLike, *, num_heads: int, layer_norm_eps: float, hidden_act: str, strict: bool = True,
) -> tuple[VidEoMT, ConversionReport]:
    """Read an upstream ``.pth`` (``weights_only=True``; see :func:`candidates.io.load_state_dict`),
    infer the config, build and load the model.

    ``strict`` raises a ValueError with the report when anything beyond the documented leftovers
    was not converted.
    """
    state = load_state_dict(path)
    with naming_file(path):  # a foreign checkpoint's missing keys are reported with the file
        cfg = infer_config(state, num_heads=num_heads, layer_norm_eps=layer_norm_eps, hidden_act=hidden_act)
        return build_converted(cfg, *convert_upstream(state, cfg), path=path, strict=strict)


def build_converted(
    cfg: VidEoMTConfig, converted: StateDict, report: ConversionReport, *, path: str | os.PathLike, strict: bool,
) -> tuple[VidEoMT, ConversionReport]:
    """``VidEoMT(cfg)`` (eval mode) loaded with a conversion's output; ``strict`` refuses an unclean one.

    Not strict, what converted is loaded and the report says what did not (missing or misshapen keys).
    """
    if strict and not report.clean:
        raise ValueError(f"checkpoint {path} did not convert cleanly:\n{report.format()}")
    model = VidEoMT(cfg)
    mismatched = {key for key, _, _ in report.shape_mismatches}
    model.load_state_dict({k: v for k, v in converted.items() if k not in mismatched},
                          strict=not (report.missing_target or mismatched))
    return model.eval(), report


def save_upstream(state: StateDict, path: str | os.PathLike) -> None:
    """Write ``state`` (upstream layout, or any wrapper of it) to ``path`` atomically."""
    write_atomically(path, lambda tmp: torch.save(state, tmp))
