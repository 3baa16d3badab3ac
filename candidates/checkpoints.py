"""Checkpoint files: loading, family recognition, inferred dimensions, mFormerV1 compatibility.

A checkpoint here is a state dict saved as ``.pth``/``.pt``/``.bin``/``.ckpt`` (read with
``torch.load(weights_only=True)``, never unpickling code) or ``.safetensors``; training wrappers
such as ``{"model": state_dict, "optimizer": ...}`` are unwrapped. Reading and writing live in
:mod:`candidates.io`; ``load_state_dict`` and ``save_state_dict`` are re-exported from there.

Recognized families and layouts:

    convnext        timm          stem.0, stages.{i}.downsample.1, stages.{i}.blocks.{j}, head.fc
                    original      downsample_layers.{i}, stages.{i}.{j}.dwconv/pwconv1/pwconv2, head
                                  (facebookresearch/ConvNeXt, e.g. convnext_tiny_22k_1k_384.pth)
    rope_mixed_vit  timm          rope.freqs (2, depth, heads, head_dim/2), blocks.{j}.attn.qkv
                    original      freqs (2, depth, embed_dim/2), freqs_t_x, freqs_t_y
                                  (naver-ai/rope-vit rope_mixed_deit_*_patch16_LS)
    mformer_v1      this repo     stem.0, stages.{0,1}, downsample.1, rope.freqs, blocks.{j}

Dimensions come from tensor shapes only. The RoPE-ViT head count is the one dimension that
not every layout stores. ``CheckpointInfo.num_heads_source`` says where the reported value
comes from, in the text output and in ``--json``:

    derived   read off a shape: timm's and mFormerV1's ``rope.freqs`` (2, depth, heads, head_dim/2)
    given     passed by the user (``num_heads=``, ``--num-heads``) and checked against the shapes
    assumed   the original layout without ``num_heads``: its ``freqs`` (2, depth, embed_dim/2)
              flattens heads and rotary pairs, and every other tensor (qkv (3C, C), proj, norms,
              layer scales, patch embedding, head) has the same shape for any head split, so no
              tensor gives the count. A checkpoint whose embed_dim and depth are a released
              variant's is assumed to have that variant's heads; otherwise head_dim 64 is assumed
              (``embed_dim // 64``; None when 64 does not divide embed_dim).

Building from an ``assumed`` count is refused unless the dims are a released variant's: a wrong
head split loads without a shape error and silently computes a different model, so
:func:`build_mformer` and :func:`to_timm_layout` ask for ``num_heads`` instead.

The compatibility table row follows the mFormerV1 seed: ConvNeXt stage dims, the width at the S2
juncture (``dims[2]``, after stage 1 and the downsample that follows it), the RoPE-ViT input
width (``embed_dim``) and the verdict. Building an mFormer from an incompatible pair raises the
same error (:func:`candidates.mformer.check_juncture`).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from candidates.convnext import VARIANTS as CONVNEXT_VARIANTS
from candidates.convnext import ConvNeXtConfig
from candidates.io import StateDict, load_state_dict, naming_file, save_state_dict
from candidates.mformer import (
    MFORMER_VARIANTS, LoadReport, MFormerConfig, MFormerV1, check_juncture, load_mformer_from_state_dicts,
)
from candidates.rope_vit import ROPE_VIT_VARIANTS, RopeViTConfig, convert_original_state_dict

__all__ = [
    "CheckpointInfo", "CompatRow", "load_state_dict", "save_state_dict", "inspect_state_dict",
    "inspect_checkpoint", "convert_original_convnext", "convnext_to_original", "rope_vit_to_original",
    "to_timm_layout", "compat_row",
    "build_mformer", "ASSUMED_HEAD_DIM", "HEADS_DERIVED", "HEADS_GIVEN", "HEADS_ASSUMED", "head_counts",
]

ASSUMED_HEAD_DIM = 64
HEADS_DERIVED, HEADS_GIVEN, HEADS_ASSUMED = "derived", "given", "assumed"  # CheckpointInfo.num_heads_source


# ---------------------------------------------------------------------------------------------
# Recognition
# ---------------------------------------------------------------------------------------------

@dataclass
class CheckpointInfo:
    """What a state dict is and the dimensions its shapes reveal."""

    family: str                       # convnext | rope_mixed_vit | mformer_v1 | unknown
    layout: str | None                # timm | original | None
    num_params: int
    num_tensors: int
    variant: str | None = None        # a known variant with exactly these dims and depths
    dims: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    path: str | None = None
    num_heads_source: str | None = None  # derived | given | assumed; None for families without heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lines = [f"checkpoint: {self.path}"] if self.path else []
        layout = f" ({self.layout} layout)" if self.layout else ""
        lines.append(f"family:     {self.family}{layout}")
        if self.variant:
            lines.append(f"variant:    {self.variant}")
        for key, value in self.dims.items():
            source = f" ({self.num_heads_source})" if key == "num_heads" and self.num_heads_source else ""
            lines.append(f"{key + ':':<11} {value}{source}")
        lines.append(f"parameters: {self.num_params:,} in {self.num_tensors} tensors")
        lines.extend(f"note:       {n}" for n in self.notes)
        return "\n".join(lines)


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    """Number of distinct integers captured by ``pattern`` over the keys."""
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def _convnext_dims(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    depths = [_count(state, rf"stages\.{i}\.blocks\.(\d+)\.") for i in range(4)]
    dims = [state["stem.0.weight"].shape[0]]
    for i in range(1, 4):
        if f"stages.{i}.downsample.1.weight" in state:
            dims.append(state[f"stages.{i}.downsample.1.weight"].shape[0])
    out: dict[str, Any] = {"depths": depths, "dims": dims}
    if "head.fc.weight" in state:
        out["num_classes"] = state["head.fc.weight"].shape[0]
    return out


def head_counts(embed_dim: int) -> list[int]:
    """Head counts a RoPE-Mixed ViT of width ``embed_dim`` can have (head_dim divisible by 4)."""
    return [h for h in range(1, embed_dim + 1) if embed_dim % h == 0 and (embed_dim // h) % 4 == 0]


def _check_given_heads(num_heads: Any, embed_dim: int) -> int:
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads <= 0:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if num_heads not in head_counts(embed_dim):
        raise ValueError(
            f"num_heads={num_heads} does not fit embed_dim {embed_dim}: head_dim = embed_dim / num_heads must be "
            f"an integer divisible by 4; head counts that fit: {head_counts(embed_dim)}"
        )
    return num_heads


def _rope_vit_dims(
    state: Mapping[str, torch.Tensor], *, original: bool, num_heads: int | None, notes: list[str]
) -> tuple[dict[str, Any], str]:
    """(dims, num_heads_source) of a RoPE-ViT (or the ViT part of an mFormerV1) state dict."""
    embed_dim = state["cls_token"].shape[-1]
    depth = _count(state, r"blocks\.(\d+)\.")
    if num_heads is not None:
        _check_given_heads(num_heads, embed_dim)
    if original:
        if num_heads is not None:
            heads, source = num_heads, HEADS_GIVEN
        else:
            heads, source = _assumed_heads(embed_dim, depth, notes), HEADS_ASSUMED
    else:
        freqs = state["rope.freqs"]
        if freqs.ndim != 4 or freqs.shape[0] != 2:
            raise ValueError(f"rope.freqs must be (2, depth, heads, head_dim / 2), got {tuple(freqs.shape)}")
        heads, source = freqs.shape[2], HEADS_DERIVED
        if num_heads is not None and num_heads != heads:
            raise ValueError(
                f"num_heads={num_heads} contradicts the checkpoint: rope.freqs {tuple(freqs.shape)} "
                f"stores {heads} heads"
            )
    out: dict[str, Any] = {"embed_dim": embed_dim, "depth": depth, "num_heads": heads}
    if "patch_embed.proj.weight" in state:
        out["patch_size"] = state["patch_embed.proj.weight"].shape[-1]
    if "blocks.0.mlp.fc1.weight" in state:
        out["mlp_dim"] = state["blocks.0.mlp.fc1.weight"].shape[0]
    if "head.weight" in state:
        out["num_classes"] = state["head.weight"].shape[0]
    return out, source


def _assumed_heads(embed_dim: int, depth: int, notes: list[str]) -> int | None:
    """The original layout's head count when nobody gave it: a released variant's, else head_dim 64."""
    released = [(name, c) for name, c in ROPE_VIT_VARIANTS.items() if (c.embed_dim, c.depth) == (embed_dim, depth)]
    fits = head_counts(embed_dim)
    if released:
        name, config = released[0]
        notes.append(
            f"num_heads is not stored in the original layout; assumed {config.num_heads} as in the released "
            f"rope_mixed_vit_{name} (head_dim {config.head_dim}); pass --num-heads if this checkpoint differs "
            f"(head counts that fit embed_dim {embed_dim}: {fits})"
        )
        return config.num_heads
    heads = embed_dim // ASSUMED_HEAD_DIM if embed_dim % ASSUMED_HEAD_DIM == 0 else None
    notes.append(
        f"num_heads is not stored in the original layout and embed_dim {embed_dim} / depth {depth} match no "
        f"released variant; assumed head_dim {ASSUMED_HEAD_DIM} -> num_heads {heads}; building needs "
        f"--num-heads / num_heads= (head counts that fit: {fits})"
    )
    return heads


def _rename_keys(state_dict: Mapping[str, torch.Tensor], rules: tuple[tuple[str, str], ...]) -> StateDict:
    """Every key rewritten by all ``(regex, replacement)`` rules in turn; values untouched."""
    out: StateDict = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def convert_original_convnext(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """facebookresearch/ConvNeXt keys -> timm keys (``downsample_layers.0`` is the stem)."""
    rules = (
        (r"^downsample_layers\.0\.", "stem."),
        (r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample."),
        (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
        (r"\.dwconv\.", ".conv_dw."),
        (r"\.pwconv1\.", ".mlp.fc1."),
        (r"\.pwconv2\.", ".mlp.fc2."),
        (r"^norm\.", "head.norm."),
        (r"^head\.(weight|bias)$", r"head.fc.\1"),
    )
    return _rename_keys(state_dict, rules)


def convnext_to_original(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """timm ConvNeXt keys -> facebookresearch/ConvNeXt keys (the inverse of :func:`convert_original_convnext`)."""
    rules = (
        (r"^stem\.", "downsample_layers.0."),
        (r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."),
        (r"\.conv_dw\.", ".dwconv."),
        (r"\.mlp\.fc1\.", ".pwconv1."),
        (r"\.mlp\.fc2\.", ".pwconv2."),
        (r"^head\.norm\.", "norm."),
        (r"^head\.fc\.", "head."),
    )
    return _rename_keys(state_dict, rules)


def rope_vit_to_original(state_dict: Mapping[str, torch.Tensor], *, grid_size: tuple[int, int] = (14, 14)) -> StateDict:
    """timm RoPE-ViT keys -> naver-ai/rope-vit keys, with the grid buffers the release saves.

    ``freqs`` flattens heads and pairs; ``freqs_t_x``/``freqs_t_y`` are the column/row index of
    each token of the ``grid_size`` training grid (14 x 14 for 224 / 16).
    """
    out = {k: v for k, v in state_dict.items() if k != "rope.freqs"}
    freqs = state_dict["rope.freqs"]
    out["freqs"] = freqs.reshape(2, freqs.shape[1], -1)
    rows, cols = grid_size
    index = torch.arange(rows * cols, dtype=torch.float32, device=freqs.device)
    out["freqs_t_x"] = index % cols
    out["freqs_t_y"] = torch.div(index, cols, rounding_mode="floor")
    return out


def _match_convnext(dims: dict[str, Any]) -> str | None:
    for name, config in CONVNEXT_VARIANTS.items():
        if list(config.depths) == dims["depths"] and list(config.dims) == dims["dims"]:
            return f"convnext_{name}"
    return None


def _match_rope_vit(dims: dict[str, Any]) -> str | None:
    for name, config in ROPE_VIT_VARIANTS.items():
        if (config.embed_dim, config.depth, config.num_heads) == (dims["embed_dim"], dims["depth"], dims["num_heads"]):
            return f"rope_mixed_vit_{name}"
    return None


def inspect_state_dict(
    state: Mapping[str, torch.Tensor], *, path: str | None = None, num_heads: int | None = None
) -> CheckpointInfo:
    """Recognize the family and layout of ``state`` and infer its dimensions from shapes.

    ``num_heads`` gives the RoPE-ViT head count the original layout does not store; where a
    shape stores it (timm layout, mFormerV1), a different value is refused with a ValueError.
    """
    # derived buffers of the original RoPE-ViT release (token grid indices) are not parameters
    derived = ("freqs_t_x", "freqs_t_y")
    num_params = sum(v.numel() for k, v in state.items() if v.is_floating_point() and k not in derived)
    info = CheckpointInfo("unknown", None, num_params, len(state), path=path)
    if "stem.0.weight" in state and "downsample.1.weight" in state and "rope.freqs" in state:
        info.family, info.layout = "mformer_v1", "timm"
        cnx = _convnext_dims(state)
        cnx["dims"].append(state["downsample.1.weight"].shape[0])
        vit, info.num_heads_source = _rope_vit_dims(state, original=False, num_heads=num_heads, notes=info.notes)
        info.dims = {"convnext_depths": cnx["depths"][:2], "convnext_dims": cnx["dims"],
                     "embed_dim": vit["embed_dim"], "depth": vit["depth"], "num_heads": vit["num_heads"]}
    elif "cls_token" in state and ("rope.freqs" in state or "freqs" in state):
        original = "rope.freqs" not in state
        info.family, info.layout = "rope_mixed_vit", "original" if original else "timm"
        info.dims, info.num_heads_source = _rope_vit_dims(state, original=original, num_heads=num_heads, notes=info.notes)
        info.variant = _match_rope_vit(info.dims) if info.dims["num_heads"] is not None else None
    elif num_heads is not None:
        raise ValueError(
            f"num_heads applies to RoPE-ViT and mFormerV1 checkpoints; {path or 'this state dict'} is not one"
        )
    elif "stem.0.weight" in state and any(k.startswith("stages.0.blocks.") for k in state):
        info.family, info.layout = "convnext", "timm"
        info.dims = _convnext_dims(state)
        info.variant = _match_convnext(info.dims)
    elif "downsample_layers.0.0.weight" in state and any(k.startswith("stages.0.0.") for k in state):
        info.family, info.layout = "convnext", "original"
        info.dims = _convnext_dims(convert_original_convnext(state))
        info.variant = _match_convnext(info.dims)
    else:
        info.notes.append("not a ConvNeXt, RoPE-Mixed ViT or mFormerV1 state dict; only counts are reported")
    return info


def inspect_checkpoint(path: str | os.PathLike, *, num_heads: int | None = None) -> CheckpointInfo:
    state = load_state_dict(path)
    with naming_file(path):
        return inspect_state_dict(state, path=str(path), num_heads=num_heads)


def _heads_for_build(info: CheckpointInfo) -> int:
    """The head count to build with; refuses an assumed count unless the dims are a released variant's."""
    heads = info.dims["num_heads"]
    if info.num_heads_source == HEADS_ASSUMED and (info.variant is None or heads is None):
        raise ValueError(
            f"cannot build from RoPE-ViT checkpoint {info.path or ''}: the original layout does not store "
            f"num_heads and embed_dim {info.dims['embed_dim']} / depth {info.dims['depth']} match no released "
            f"variant (head_dim {ASSUMED_HEAD_DIM} would give {heads}); pass num_heads= (CLI: --num-heads), "
            f"one of {head_counts(info.dims['embed_dim'])}"
        )
    return heads


def to_timm_layout(
    state: Mapping[str, torch.Tensor], info: CheckpointInfo, *, num_heads: int | None = None
) -> tuple[StateDict, list[str]]:
    """(timm-layout state dict, dropped derived keys) for a recognized ConvNeXt or RoPE-ViT.

    An original-layout RoPE-ViT needs its head count to un-flatten ``freqs``: ``num_heads``, else
    the one in ``info`` when derived or given (an assumed one only for a released variant's dims).
    """
    if info.family == "convnext":
        if num_heads is not None:
            raise ValueError(f"num_heads applies to RoPE-ViT checkpoints, got family {info.family!r}")
        return (convert_original_convnext(state) if info.layout == "original" else dict(state)), []
    if info.family == "rope_mixed_vit":
        if num_heads is not None:
            info = inspect_state_dict(state, path=info.path, num_heads=num_heads)
        if info.layout == "original":
            return convert_original_state_dict(state, num_heads=_heads_for_build(info))
        return dict(state), []
    raise ValueError(f"expected a convnext or rope_mixed_vit checkpoint, got family {info.family!r}")


# ---------------------------------------------------------------------------------------------
# Compatibility
# ---------------------------------------------------------------------------------------------

@dataclass
class CompatRow:
    """One row of the mFormerV1 compatibility table (which ConvNeXt and ViT checkpoints join)."""

    variant: str | None
    convnext_checkpoint: str | None
    convnext_dims: list[int]
    juncture_dim: int
    rope_vit_checkpoint: str | None
    rope_input_dim: int
    compatible: bool
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        header = ("| Variant | ConvNeXt Checkpoint | ConvNeXt Stages (DIMS) | Output Dim @ S2 Juncture "
                  "| RoPE-ViT Checkpoint | RoPE Input Dim | Compatible? |")
        rule = "| :-- | :-- | :-- | :-- | :-- | :-- | :-- |"
        verdict = "Yes" if self.compatible else "No"
        row = (f"| {self.variant or '-'} | {self.convnext_checkpoint} | {self.convnext_dims} | {self.juncture_dim} "
               f"| {self.rope_vit_checkpoint} | {self.rope_input_dim} | {verdict} |")
        return "\n".join([header, rule, row])


def _require(info: CheckpointInfo, family: str, role: str) -> None:
    if info.family != family:
        raise ValueError(
            f"{role} checkpoint {info.path or ''} must be a {family} state dict, got family {info.family!r}"
        )


def _mformer_variant(convnext: CheckpointInfo, rope: CheckpointInfo) -> str | None:
    for name, config in MFORMER_VARIANTS.items():
        if convnext.variant == config.convnext_name and rope.variant == _match_rope_vit(
            {"embed_dim": config.vit.embed_dim, "depth": config.vit.depth, "num_heads": config.vit.num_heads}
        ):
            return f"mFormerV1_{name}"
    return None


def compat_row(convnext: CheckpointInfo, rope: CheckpointInfo) -> CompatRow:
    """The table row for a ConvNeXt / RoPE-ViT pair; ``error`` says why when incompatible."""
    _require(convnext, "convnext", "ConvNeXt")
    _require(rope, "rope_mixed_vit", "RoPE-ViT")
    dims = list(convnext.dims["dims"])
    if len(dims) < 3:
        raise ValueError(f"ConvNeXt checkpoint has only {len(dims)} stages with a width; the S2 juncture needs 3")
    error = None
    try:
        check_juncture(tuple(dims), rope.dims["embed_dim"])
    except ValueError as exc:
        error = str(exc)
    return CompatRow(
        variant=_mformer_variant(convnext, rope),
        convnext_checkpoint=Path(convnext.path).name if convnext.path else convnext.variant,
        convnext_dims=dims,
        juncture_dim=dims[2],
        rope_vit_checkpoint=Path(rope.path).name if rope.path else rope.variant,
        rope_input_dim=rope.dims["embed_dim"],
        compatible=error is None,
        error=error,
    )


def build_mformer(
    convnext: str | os.PathLike | Mapping[str, torch.Tensor],
    rope_vit: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    num_heads: int | None = None,
) -> tuple[MFormerV1, LoadReport]:
    """An mFormerV1 shaped by and filled from a ConvNeXt and a RoPE-ViT checkpoint (either layout).

    ``num_heads`` is the RoPE-ViT head count; required for an original-layout checkpoint whose
    dims are not a released variant's (that layout does not store it), checked against the
    shapes otherwise.
    """
    cnx_path = str(convnext) if isinstance(convnext, (str, os.PathLike)) else None
    vit_path = str(rope_vit) if isinstance(rope_vit, (str, os.PathLike)) else None
    cnx_state = load_state_dict(convnext) if cnx_path else dict(convnext)
    vit_state = load_state_dict(rope_vit) if vit_path else dict(rope_vit)
    with naming_file(cnx_path):
        cnx_info = inspect_state_dict(cnx_state, path=cnx_path)
        _require(cnx_info, "convnext", "ConvNeXt")
    with naming_file(vit_path):
        vit_info = inspect_state_dict(vit_state, path=vit_path, num_heads=num_heads)
        _require(vit_info, "rope_mixed_vit", "RoPE-ViT")
    check_juncture(tuple(cnx_info.dims["dims"]), vit_info.dims["embed_dim"])
    heads = _heads_for_build(vit_info)
    cnx_state, _ = to_timm_layout(cnx_state, cnx_info)
    vit_state, dropped = to_timm_layout(vit_state, vit_info)
    d, v = cnx_info.dims, vit_info.dims
    config = MFormerConfig(
        convnext=ConvNeXtConfig(depths=tuple(max(n, 1) for n in d["depths"]), dims=tuple(d["dims"])),
        vit=RopeViTConfig(
            embed_dim=v["embed_dim"], depth=v["depth"], num_heads=heads, num_classes=v.get("num_classes", 0),
            mlp_ratio=v.get("mlp_dim", 4 * v["embed_dim"]) / v["embed_dim"],
        ),
        convnext_name=cnx_info.variant or "convnext", vit_name=vit_info.variant or "rope_mixed_vit",
    )
    model = MFormerV1(config)
    report = load_mformer_from_state_dicts(model, cnx_state, vit_state)
    report.unused_rope_vit = sorted(report.unused_rope_vit + dropped)
    return model, report
