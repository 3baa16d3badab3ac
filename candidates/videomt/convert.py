"""VidEoMT weight mappings: every upstream layout, both directions, one key table each.

The candidate's keys are transformers' Videomt names (the patch conv under
``embeddings.patch_embed.projection``). Four upstream layouts, each one :class:`harness.keymap.KeyTable`
read forward (upstream -> candidate) and backward:

- :data:`RELEASE_DINOV2`, the official release of ``tue-mps/videomt`` (``.pth``), a DINOv2-style timm
  ViT inside the EoMT wrapper::

      backbone.encoder.backbone.{cls_token, reg_token, pos_embed (1, N, D)}
      backbone.encoder.backbone.patch_embed.proj.{weight, bias}
      backbone.encoder.backbone.blocks.{i}.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}
      backbone.encoder.backbone.norm.{weight, bias}

- :data:`RELEASE_DINOV3`, the DINOv3 release: transformers' ``DINOv3ViTModel`` patched to look like a
  timm ViT (its ``embeddings`` re-registered as ``patch_embed``, its ``mask_token`` deleted, ``layer``
  as ``blocks``), so transformers' DINOv3 names under the same prefix::

      backbone.encoder.backbone.patch_embed.{cls_token (1, 1, D), register_tokens (1, R, D)}
      backbone.encoder.backbone.patch_embed.patch_embeddings.{weight (D, C, p, p), bias}
      backbone.encoder.backbone.blocks.{i}.{norm1, norm2}.{weight, bias}
      backbone.encoder.backbone.blocks.{i}.attention.{q_proj, v_proj, o_proj}.{weight, bias}, k_proj.weight
      backbone.encoder.backbone.blocks.{i}.{layer_scale1, layer_scale2}.lambda1
      backbone.encoder.backbone.blocks.{i}.mlp.{up_proj, down_proj}.{weight, bias}
      backbone.encoder.backbone.norm.{weight, bias}

  Both releases share the heads: ``backbone.q.weight``, ``backbone.query_updater.*``,
  ``backbone.class_head.*``, ``backbone.mask_head.{0,2,4}.*``, ``backbone.upscale.{i}.{conv1, conv2,
  norm}.*``, ``backbone.attn_mask_probs`` and the loss buffer ``criterion.empty_weight`` (not carried).
- :data:`TRANSFORMERS_VIDEOMT`: ``VideomtForUniversalSegmentation``.
- :data:`TRANSFORMERS_EOMT_DINOV3`: ``EomtDinov3ForUniversalSegmentation`` (no ``query_updater``).

:data:`VIDEOMT_RENAME` and :data:`EOMT_DINOV3_RENAME` are the module-name rules the parity pairs
trace with (candidate module -> reference module, ``harness.Pair.rename``): modules without
parameters (the activation) have no key to map, so they are named here next to the tables.

Tensor work that is not a rename stays in small functions beside the tables:

- DINOv2 ``pos_embed`` is (1, N, D) with no CLS slot; ours is (N, D).
- DINOv2's fused ``attn.qkv`` is split by its table into q/k/v, weights *and all three biases*
  (a dropped key bias is a silent error: the model still runs).
- DINOv3 has no key bias (transformers: ``key_bias=False``). Upstream's ``FUSED_QKV`` speed option
  builds ``attention.qkv_proj`` in place and writes zeros for the missing bias; a fused model saved
  as is has it. Reading, an all-zero segment the config has no bias for is dropped (adding zero is
  exact); a nonzero one is carried, never dropped: with RoPE a key bias is rotated per patch, so
  softmax does not cancel it. Writing, ``fused_qkv=True`` fills the zeros as upstream does.
- EoMT-DINOv3 runs single frames and has no ``query_updater``: reading fills zeros.

The releases do not store everything: the config is read off the shapes and what they cannot tell
(heads, LayerNorm eps, activation; for DINOv3 also ``rope_theta`` and ``image_size``, as RoPE
periods are a non-persistent buffer) must be passed. A release conversion returns a
:class:`ConversionReport` of unconverted source keys, missing target keys and shape mismatches;
``criterion.empty_weight`` is the one documented leftover and ``embeddings.mask_token`` (the DINOv2
release has none; only used with ``bool_masked_pos``) is filled with zeros and listed as such.
:func:`recognize` tells the two release layouts from other checkpoints and infers their dimensions.

Not supported (clear ``ValueError``): the gated-MLP DINOv3 variants (``mlp.gate_proj``, ViT-S+/H+)
and the EoMT-DINOv3 release (``network.*``), whose backbone tensors are deltas from DINOv3's
pretrained weights and mean nothing without them.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from candidates.io import StateDict, load_exactly, load_state_dict, naming_file, write_atomically
from candidates.recognize import HEADS_GIVEN, CheckpointInfo, count_parameters
from candidates.videomt.config import VARIANTS, VidEoMTConfig
from harness.checks import check_int, check_value
from harness.keymap import KeyTable, Rule, apply_moves

if TYPE_CHECKING:  # recognition runs without torch; the functions that compute import it themselves
    import torch

    from candidates.videomt.videomt import VidEoMT

__all__ = [
    "RELEASE_DINOV2", "RELEASE_DINOV3", "TRANSFORMERS_VIDEOMT", "TRANSFORMERS_EOMT_DINOV3",
    "ConversionReport", "DOCUMENTED_UNCONVERTED", "FILLED_TARGETS", "recognize", "is_dinov3_layout",
    "infer_config", "infer_config_dinov3", "head_fields",
    "convert_upstream", "to_upstream", "convert_upstream_dinov3", "to_upstream_dinov3",
    "convert_hf_videomt", "to_hf_videomt", "convert_hf_eomt_dinov3", "to_hf_eomt_dinov3",
    "VIDEOMT_RENAME", "EOMT_DINOV3_RENAME",
    "load_upstream", "load_upstream_dinov3", "build_converted", "save_upstream", "read_checkpoint",
]

VIT = "backbone.encoder.backbone."
DOCUMENTED_UNCONVERTED = frozenset({"criterion.empty_weight"})
FILLED_TARGETS = {"embeddings.mask_token": "zeros: upstream has no mask token"}

# ----------------------------------------------------------------------------- tables

_LOSS = Rule("criterion.empty_weight", None)  # the loss's class weights: no part of inference

_RELEASE_HEADS = (
    Rule("backbone.q.weight", "query.weight"),
    Rule("backbone.query_updater.", "query_updater."),
    Rule("backbone.class_head.", "class_predictor."),
    Rule("backbone.mask_head.0.", "mask_head.fc1."),
    Rule("backbone.mask_head.2.", "mask_head.fc2."),
    Rule("backbone.mask_head.4.", "mask_head.fc3."),
    Rule("backbone.upscale.{i}.conv1.", "upscale_block.block.{i}.conv1."),
    Rule("backbone.upscale.{i}.conv2.", "upscale_block.block.{i}.conv2."),
    Rule("backbone.upscale.{i}.norm.", "upscale_block.block.{i}.layernorm2d."),
    Rule("backbone.attn_mask_probs", "attn_mask_probs"),
    _LOSS,
)

RELEASE_DINOV2 = KeyTable(
    Rule(VIT + "cls_token", "embeddings.cls_token"),
    Rule(VIT + "reg_token", "embeddings.register_tokens"),
    Rule(VIT + "pos_embed", "embeddings.position_embeddings"),  # (1, N, D) <-> (N, D): _flat/_nested_positions
    Rule(VIT + "patch_embed.proj.", "embeddings.patch_embed.projection."),
    Rule(VIT + "blocks.{i}.norm1.", "layers.{i}.norm1."),
    Rule(VIT + "blocks.{i}.attn.qkv.", tuple(f"layers.{{i}}.attention.{n}_proj." for n in "qkv")),
    Rule(VIT + "blocks.{i}.attn.proj.", "layers.{i}.attention.out_proj."),
    Rule(VIT + "blocks.{i}.ls1.gamma", "layers.{i}.layer_scale1.lambda1"),
    Rule(VIT + "blocks.{i}.norm2.", "layers.{i}.norm2."),
    Rule(VIT + "blocks.{i}.mlp.fc1.", "layers.{i}.mlp.fc1."),
    Rule(VIT + "blocks.{i}.mlp.fc2.", "layers.{i}.mlp.fc2."),
    Rule(VIT + "blocks.{i}.ls2.gamma", "layers.{i}.layer_scale2.lambda1"),
    Rule(VIT + "norm.", "layernorm."),
    *_RELEASE_HEADS,
    Rule(None, "embeddings.mask_token"),  # filled with zeros on reading (FILLED_TARGETS)
    name="VidEoMT DINOv2 release",
)

RELEASE_DINOV3 = KeyTable(
    Rule(VIT + "patch_embed.cls_token", "embeddings.cls_token"),
    Rule(VIT + "patch_embed.register_tokens", "embeddings.register_tokens"),
    Rule(VIT + "patch_embed.patch_embeddings.", "embeddings.patch_embed.projection."),
    Rule(VIT + "blocks.{i}.norm1.", "layers.{i}.norm1."),
    Rule(VIT + "blocks.{i}.attention.q_proj.", "layers.{i}.attention.q_proj."),
    Rule(VIT + "blocks.{i}.attention.k_proj.", "layers.{i}.attention.k_proj."),
    Rule(VIT + "blocks.{i}.attention.v_proj.", "layers.{i}.attention.v_proj."),
    Rule(VIT + "blocks.{i}.attention.o_proj.", "layers.{i}.attention.out_proj."),
    Rule(VIT + "blocks.{i}.layer_scale1.lambda1", "layers.{i}.layer_scale1.lambda1"),
    Rule(VIT + "blocks.{i}.norm2.", "layers.{i}.norm2."),
    Rule(VIT + "blocks.{i}.mlp.up_proj.", "layers.{i}.mlp.fc1."),
    Rule(VIT + "blocks.{i}.mlp.down_proj.", "layers.{i}.mlp.fc2."),
    Rule(VIT + "blocks.{i}.layer_scale2.lambda1", "layers.{i}.layer_scale2.lambda1"),
    Rule(VIT + "norm.", "layernorm."),
    *_RELEASE_HEADS,
    name="VidEoMT DINOv3 release",
)

# Keys transformers and the candidate name alike; the rules naming them differently come first.
_SAME_NAMES = tuple(Rule(key, key) for key in (
    "embeddings.cls_token", "embeddings.register_tokens", "embeddings.mask_token", "layers.", "layernorm.",
    "query.weight", "query_updater.", "class_predictor.", "mask_head.", "upscale_block.", "attn_mask_probs",
))

TRANSFORMERS_VIDEOMT = KeyTable(
    Rule("embeddings.patch_embeddings.", "embeddings.patch_embed."),
    Rule("embeddings.position_embeddings.weight", "embeddings.position_embeddings"),
    *_SAME_NAMES,
    _LOSS,
    name="transformers Videomt",
)

TRANSFORMERS_EOMT_DINOV3 = KeyTable(
    Rule("embeddings.patch_embeddings.", "embeddings.patch_embed.projection."),
    Rule("layers.{i}.attention.o_proj.", "layers.{i}.attention.out_proj."),
    Rule("layers.{i}.mlp.up_proj.", "layers.{i}.mlp.fc1."),
    Rule("layers.{i}.mlp.down_proj.", "layers.{i}.mlp.fc2."),
    Rule(None, "query_updater.weight"),  # EoMT runs single frames: zeros on reading (_zero_query_updater)
    Rule(None, "query_updater.bias"),
    *_SAME_NAMES,
    _LOSS,
    name="transformers EoMT-DINOv3",
)

# Candidate module names -> transformers names, where they differ (for tracing, ``harness.Pair.rename``).
VIDEOMT_RENAME: tuple[tuple[str, str], ...] = (
    (r"^embeddings\.patch_embed", "embeddings.patch_embeddings"),
    (r"\.mlp\.act$", ".mlp.activation_fn"),
)
EOMT_DINOV3_RENAME: tuple[tuple[str, str], ...] = (
    (r"^embeddings\.patch_embed\.projection$", "embeddings.patch_embeddings"),
    (r"\.attention\.out_proj$", ".attention.o_proj"),
    (r"\.mlp\.fc1$", ".mlp.up_proj"),
    (r"\.mlp\.fc2$", ".mlp.down_proj"),
    (r"\.mlp\.act$", ".mlp.act_fn"),
)

_BLOCK = re.compile(rf"^{re.escape(VIT)}blocks\.(\d+)\.norm1\.weight$")
_FUSED = re.compile(rf"^{re.escape(VIT)}blocks\.(\d+)\.attention\.qkv_proj\.(weight|bias)$")
_SPLIT = re.compile(rf"^{re.escape(VIT)}blocks\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$")
_POS = VIT + "pos_embed"
_DINOV2_PATCH = VIT + "patch_embed.proj.weight"
_DINOV3_PATCH = VIT + "patch_embed.patch_embeddings.weight"

# ----------------------------------------------------------------------------- the conversion report


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


# ----------------------------------------------------------------------------- recognition and config inference


def is_dinov3_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """True for the DINOv3 release layout (DINOv3's patch embeddings, no ``pos_embed``)."""
    return _DINOV3_PATCH in state


def _require(state: Mapping[str, torch.Tensor], key: str, layout: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"not {layout} checkpoint: key {key!r} is missing "
                         f"({len(state)} keys, e.g. {sorted(state)[:3]})")
    return state[key]


def _square_patch(kernel: torch.Tensor, key: str) -> torch.Tensor:
    if kernel.ndim != 4 or kernel.shape[-1] != kernel.shape[-2]:
        raise ValueError(f"{key} must be (D, C, p, p) with square patches, got {tuple(kernel.shape)}")
    return kernel


def head_fields(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Config fields of the segmentation head, stored alike in the DINOv2 and DINOv3 releases."""
    upscales = {int(m.group(1)) for k in state if (m := re.match(r"^backbone\.upscale\.(\d+)\.", k))}
    layout = "an upstream VidEoMT"
    return dict(
        num_queries=_require(state, "backbone.q.weight", layout).shape[0],
        num_blocks=_require(state, "backbone.attn_mask_probs", layout).shape[0],
        num_labels=_require(state, "backbone.class_head.weight", layout).shape[0] - 1,  # + "no object"
        num_upscale_blocks=len(upscales),
    )


def _num_layers(state: Mapping[str, torch.Tensor]) -> int:
    return len({m.group(1) for k in state if (m := _BLOCK.match(k))})


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


def _dinov2_fields(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The config fields a DINOv2 release stores in its shapes."""
    if is_dinov3_layout(state):
        raise ValueError("this is the DINOv3 release layout (RoPE, no pos_embed): use "
                         "candidates.videomt.convert.infer_config_dinov3")
    layout = "an upstream VidEoMT"
    patch = _square_patch(_require(state, _DINOV2_PATCH, layout), _DINOV2_PATCH)  # (D, C, p, p)
    grid = _pos_grid(_require(state, _POS, layout), hidden=patch.shape[0])
    has_bias = f"{VIT}blocks.0.attn.qkv.bias" in state
    reg = state.get(VIT + "reg_token")
    return dict(
        backbone="dinov2", hidden_size=patch.shape[0], num_layers=_num_layers(state),
        intermediate_size=_require(state, f"{VIT}blocks.0.mlp.fc1.weight", layout).shape[0],
        patch_size=patch.shape[-1], image_size=grid * patch.shape[-1], num_channels=patch.shape[1],
        num_register_tokens=0 if reg is None else reg.shape[1], **head_fields(state),
        query_bias=has_bias, key_bias=has_bias, value_bias=has_bias,
    )


def _dinov3_fields(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The config fields a DINOv3 release stores (no image size: positions come from RoPE)."""
    if any(k.startswith("network.encoder.backbone.") for k in state):
        raise ValueError("this is the EoMT-DINOv3 release layout (network.*): its backbone tensors are "
                         "deltas from DINOv3's pretrained weights; merge them first, then rename to backbone.*")
    layout = "a VidEoMT DINOv3"
    patch = _square_patch(_require(state, _DINOV3_PATCH, layout), _DINOV3_PATCH)  # (D, C, p, p)
    query_bias, key_bias, value_bias = _qkv_biases(state, patch.shape[0])
    return dict(
        backbone="dinov3", hidden_size=patch.shape[0], num_layers=_num_layers(state),
        intermediate_size=_require(state, f"{VIT}blocks.0.mlp.up_proj.weight", layout).shape[0],
        patch_size=patch.shape[-1], num_channels=patch.shape[1],
        num_register_tokens=_require(state, f"{VIT}patch_embed.register_tokens", layout).shape[1],
        **head_fields(state), query_bias=query_bias, key_bias=key_bias, value_bias=value_bias,
    )


def _qkv_biases(state: Mapping[str, torch.Tensor], hidden: int) -> tuple[bool, bool, bool]:
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
            per_block[i] = _fused_biases(fused, hidden, f"{attn}qkv_proj.bias")
        else:
            per_block[i] = tuple(f"{attn}{n}_proj.bias" in state for n in "qkv")
    if len(set(per_block.values())) > 1:
        raise ValueError(f"q/k/v bias presence must be the same in every block, got {per_block}")
    return next(iter(per_block.values()), (True, True, True))


def _fused_biases(fused: torch.Tensor | None, hidden: int, key: str) -> tuple[bool, bool, bool]:
    """Which (q, k, v) segments of a fused (3 * hidden,) bias are biases: those with a nonzero value.

    Upstream's fusion writes zeros for a projection without a bias, so an all-zero segment is none;
    a NaN counts as nonzero. Read through ``tolist()``, as recognition sees only tensor headers.
    """
    if fused is None:
        return False, False, False
    if tuple(fused.shape) != (3 * hidden,):
        raise ValueError(f"{key} must be ({3 * hidden},): q, k and v segments of hidden size {hidden}, "
                         f"got {tuple(fused.shape)}")
    values = fused.tolist()
    return tuple(any(v != 0 for v in values[j * hidden:(j + 1) * hidden]) for j in range(3))


def _refuse_gated_mlp(state: Mapping[str, torch.Tensor]) -> None:
    if gated := sorted(k for k in state if ".mlp.gate_proj." in k)[:1]:
        raise ValueError(f"gated-MLP (SwiGLU) DINOv3 backbones are not supported by the candidate, got {gated[0]!r}")


def infer_config(
    state: Mapping[str, torch.Tensor], *, num_heads: int, layer_norm_eps: float, hidden_act: str,
) -> VidEoMTConfig:
    """The DINOv2 release's architecture read off its shapes; heads, eps and activation are not in them."""
    return VidEoMTConfig(**_dinov2_fields(state), num_heads=num_heads, layer_norm_eps=layer_norm_eps,
                         hidden_act=hidden_act)


def infer_config_dinov3(
    state: Mapping[str, torch.Tensor], *, num_heads: int, layer_norm_eps: float, hidden_act: str,
    rope_theta: float, image_size: int,
) -> VidEoMTConfig:
    """The DINOv3 release's architecture read off the checkpoint; what it cannot tell is an argument.

    VidEoMT never masks attention: ``masked_attention=False``.
    """
    fields_ = _dinov3_fields(state)
    _refuse_gated_mlp(state)
    return VidEoMTConfig(**fields_, num_heads=num_heads, layer_norm_eps=layer_norm_eps, hidden_act=hidden_act,
                         rope_theta=rope_theta, image_size=image_size, masked_attention=False)


def recognize(state: Mapping[str, torch.Tensor], *, num_heads: int | None = None) -> CheckpointInfo | None:
    """A VidEoMT release (DINOv2 or DINOv3 layout) and the dimensions its shapes reveal; None for others.

    A recognized but malformed release raises a ValueError saying what is wrong. ``num_heads`` is
    not stored in either layout: given, it is checked against the width and reported as given.
    """
    if is_dinov3_layout(state):
        layout, dims = "dinov3", _dinov3_fields(state)
        unstored = "num_heads, layer_norm_eps, hidden_act, rope_theta and image_size"
    elif _DINOV2_PATCH in state:
        layout, dims = "dinov2", _dinov2_fields(state)
        unstored = "num_heads, layer_norm_eps and hidden_act"
    else:
        return None
    del dims["backbone"]
    notes = [f"{unstored} are not stored in this layout: pass them to load_upstream"
             + ("_dinov3" if layout == "dinov3" else "")]
    if layout == "dinov3" and any(_FUSED.match(k) for k in state):
        notes.append("fused attention.qkv_proj (upstream's FUSED_QKV): split on loading, zero bias segments dropped")
    if gated := [k for k in state if ".mlp.gate_proj." in k]:
        notes.append(f"gated-MLP (SwiGLU) backbone ({gated[0]}): not supported by the candidate")
    if num_heads is not None:
        dims["num_heads"] = _check_heads(num_heads, dims["hidden_size"], layout)
    return CheckpointInfo(
        family="videomt", layout=layout,
        num_params=count_parameters(state), num_tensors=len(state), variant=_variant(layout, dims), dims=dims,
        notes=notes, num_heads_source=HEADS_GIVEN if num_heads is not None else None,
    )


def _check_heads(num_heads: Any, hidden: int, layout: str) -> int:
    check_int("num_heads", num_heads, minimum=1)
    quarters = layout == "dinov3"  # 2D RoPE rotates each head in quarters
    fits = [h for h in range(1, hidden + 1) if hidden % (4 * h if quarters else h) == 0]
    return check_value("num_heads", num_heads, num_heads in fits, expected=f"one of {fits}",
                       fix=f"the heads split hidden size {hidden} of this {layout} release"
                           + (" into head_dim divisible by 4" if quarters else ""))


def _variant(layout: str, dims: Mapping[str, Any]) -> str | None:
    """The named variant whose config has every dimension the checkpoint stores, if any."""
    for name, config in VARIANTS.items():
        if config.backbone == layout and all(getattr(config, k) == v for k, v in dims.items()):
            return f"videomt_{name}"
    return None


# ----------------------------------------------------------------------------- release conversion


def _flat_positions(state: StateDict) -> StateDict:
    """(1, N, D) ``pos_embed`` read into (N, D) ``position_embeddings``; others unchanged."""
    key = "embeddings.position_embeddings"
    if key in state and state[key].ndim >= 2:
        state[key] = state[key].reshape(-1, state[key].shape[-1])
    return state


def _nested_positions(state: StateDict) -> StateDict:
    """(N, D) ``position_embeddings`` written as the release's (1, N, D); others unchanged."""
    key = "embeddings.position_embeddings"
    return {k: v[None] if k == key else v for k, v in state.items()}


def _split_fused_qkv(state: Mapping[str, torch.Tensor], config: VidEoMTConfig) -> tuple[StateDict, dict[str, str]]:
    """DINOv3 ``attention.qkv_proj`` -> split upstream keys, and where each split key came from.

    An all-zero bias segment that ``config`` has no bias for is upstream's fill: dropped, exactly.
    """
    has_bias = {"q": config.query_bias, "k": config.key_bias, "v": config.value_bias}
    out: StateDict = {}
    origins: dict[str, str] = {}
    for key, value in state.items():
        if (m := _FUSED.match(key)) is None:
            out[key] = value
            continue
        i, kind = m.groups()
        for name, part in zip("qkv", value.chunk(3, dim=0)):  # (3D, ...) -> three (D, ...)
            if kind == "bias" and not has_bias[name] and not part.ne(0).any():
                continue
            split = f"{VIT}blocks.{i}.attention.{name}_proj.{kind}"
            out[split], origins[split] = part, f"{key}[{name}]"
    return out, origins


def _fuse_qkv(state: StateDict) -> StateDict:
    """Split upstream q/k/v projections -> ``attention.qkv_proj`` as upstream fuses them (zero bias fill)."""
    import torch

    out: StateDict = {}
    for key, value in state.items():
        if (m := _SPLIT.match(key)) is None:
            out[key] = value
            continue
        i, _, kind = m.groups()
        fused = f"{VIT}blocks.{i}.attention.qkv_proj.{kind}"
        if fused not in out:
            width = state[f"{VIT}blocks.{i}.attention.q_proj.weight"].shape[0]
            parts = [state.get(f"{VIT}blocks.{i}.attention.{n}_proj.{kind}") for n in "qkv"]
            out[fused] = torch.cat([value.new_zeros(width) if p is None else p for p in parts], dim=0)  # (3D, ...)
    return out


def _to_config(
    table: KeyTable, state: Mapping[str, torch.Tensor], config: VidEoMTConfig, origins: Mapping[str, str] | None = None,
) -> tuple[StateDict, ConversionReport]:
    """Read ``state`` through ``table`` and fit it to ``config``; the report says what did not fit.

    ``origins`` names source tensors that are not keys of ``state`` (a segment of a fused one).
    """
    import torch

    from candidates.videomt.videomt import VidEoMT

    moves, ignored, unmatched = table.moves(state, to="candidate")
    source = {target: (origins or {}).get(m.sources[0], m.sources[0]) for m in moves for target in m.targets}
    out = _flat_positions({k: v.clone() for k, v in apply_moves(moves, state).items()})
    report = ConversionReport(unconverted_source=[*ignored, *unmatched])
    expected = VidEoMT(config).state_dict()
    for key, reason in FILLED_TARGETS.items():
        if key in expected and key not in out:
            out[key] = torch.zeros_like(expected[key])
            report.filled[key] = reason
    report.missing_target = sorted(set(expected) - set(out))
    for key in sorted(set(out) - set(expected)):  # read into a key this config does not have
        report.unconverted_source.append(source[key])
        del out[key]
    report.shape_mismatches = [(k, tuple(out[k].shape), tuple(expected[k].shape))
                               for k in out if out[k].shape != expected[k].shape]
    return out, report


def convert_upstream(state: Mapping[str, torch.Tensor], config: VidEoMTConfig) -> tuple[StateDict, ConversionReport]:
    """DINOv2 release state dict -> (candidate state dict for ``config``, report). Pure; never raises on
    leftovers: the report lists them and loading strictly is the caller's choice."""
    return _to_config(RELEASE_DINOV2, state, config)


def to_upstream(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Candidate (dinov2) state dict -> DINOv2 release layout; inverse of :func:`convert_upstream`."""
    if "embeddings.position_embeddings" not in state:
        raise ValueError("the DINOv2 release layout needs learned positions (embeddings.position_embeddings); "
                         "a dinov3 model is written by candidates.videomt.convert.to_upstream_dinov3")
    return {k: v.clone() for k, v in RELEASE_DINOV2.to_reference(_nested_positions(dict(state))).items()}


def convert_upstream_dinov3(
    state: Mapping[str, torch.Tensor], config: VidEoMTConfig,
) -> tuple[StateDict, ConversionReport]:
    """DINOv3 release state dict (split or fused q/k/v) -> (candidate state dict for ``config``, report).
    Pure; the report lists what was not carried over (a nonzero fused bias segment the config lacks too)."""
    if config.backbone != "dinov3":
        raise ValueError(f"the DINOv3 release layout needs a dinov3 config, got backbone={config.backbone!r}")
    split, origins = _split_fused_qkv(state, config)
    return _to_config(RELEASE_DINOV3, split, config, origins)


def to_upstream_dinov3(state: Mapping[str, torch.Tensor], *, fused_qkv: bool = False) -> StateDict:
    """Candidate (dinov3) state dict -> DINOv3 release layout; inverse of :func:`convert_upstream_dinov3`.

    ``fused_qkv`` writes ``attention.qkv_proj`` as upstream's fusion does (zeros for absent biases).
    """
    if "embeddings.position_embeddings" in state:
        raise ValueError("the DINOv3 release layout has no learned positions: this is a dinov2 model; "
                         "use candidates.videomt.convert.to_upstream")
    split = {k: v.clone() for k, v in RELEASE_DINOV3.to_reference(state).items()}
    return _fuse_qkv(split) if fused_qkv else split


# ----------------------------------------------------------------------------- transformers layouts


def convert_hf_videomt(state: Mapping[str, torch.Tensor]) -> StateDict:
    """transformers Videomt state dict -> candidate state dict (a rename; the loss buffer is not carried)."""
    return TRANSFORMERS_VIDEOMT.to_candidate(state)


def to_hf_videomt(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Candidate (dinov2) state dict -> transformers Videomt names (without its loss buffer)."""
    return TRANSFORMERS_VIDEOMT.to_reference(state)


def convert_hf_eomt_dinov3(state: Mapping[str, torch.Tensor]) -> StateDict:
    """EoMT-DINOv3 state dict -> candidate state dict; the candidate's query_updater (unused on
    single frames, absent upstream) gets zeros so the load stays strict."""
    return _zero_query_updater(TRANSFORMERS_EOMT_DINOV3.to_candidate(state))


def to_hf_eomt_dinov3(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Candidate (dinov3) state dict -> EoMT-DINOv3 names (without its loss buffer; the
    query_updater, which EoMT does not have, is left out)."""
    return TRANSFORMERS_EOMT_DINOV3.to_reference(state)


def _zero_query_updater(state: StateDict) -> StateDict:
    query = state["query.weight"]  # (Q, D)
    d = query.shape[1]
    return {**state, "query_updater.weight": query.new_zeros(d, d), "query_updater.bias": query.new_zeros(d)}


# ----------------------------------------------------------------------------- files

# A state dict from a checkpoint file: bare, or under ``model`` (detectron2), ``state_dict`` and the
# other wrappers :func:`candidates.io.load_state_dict` unwraps.
read_checkpoint = load_state_dict


def load_upstream(
    path: str | os.PathLike, *, num_heads: int, layer_norm_eps: float, hidden_act: str, strict: bool = True,
) -> tuple[VidEoMT, ConversionReport]:
    """Read a DINOv2 release ``.pth`` (``weights_only=True``; see :func:`candidates.io.load_state_dict`),
    infer the config, build and load the model.

    ``strict`` raises a ValueError with the report when anything beyond the documented leftovers
    was not converted.
    """
    state = load_state_dict(path)
    with naming_file(path):  # a foreign checkpoint's missing keys are reported with the file
        config = infer_config(state, num_heads=num_heads, layer_norm_eps=layer_norm_eps, hidden_act=hidden_act)
        return build_converted(config, *convert_upstream(state, config), path=path, strict=strict)


def load_upstream_dinov3(
    path: str | os.PathLike, *, num_heads: int, layer_norm_eps: float, hidden_act: str, rope_theta: float,
    image_size: int, strict: bool = True,
) -> tuple[VidEoMT, ConversionReport]:
    """Read a DINOv3 release ``.pth``, infer the config, build and load the model (``strict`` as in
    :func:`load_upstream`)."""
    state = load_state_dict(path)
    with naming_file(path):
        config = infer_config_dinov3(state, num_heads=num_heads, layer_norm_eps=layer_norm_eps, hidden_act=hidden_act,
                                  rope_theta=rope_theta, image_size=image_size)
        return build_converted(config, *convert_upstream_dinov3(state, config), path=path, strict=strict)


def build_converted(
    config: VidEoMTConfig, converted: StateDict, report: ConversionReport, *, path: str | os.PathLike, strict: bool,
) -> tuple[VidEoMT, ConversionReport]:
    """``VidEoMT(config)`` (eval mode) loaded with a conversion's output; ``strict`` refuses an unclean one.

    Not strict, what converted is loaded and the report says what did not (missing or misshapen keys,
    which keep the model's initial values); anything else that does not fit is still an error.
    """
    from candidates.videomt.videomt import VidEoMT

    if strict and not report.clean:
        raise ValueError(f"checkpoint {path} did not convert cleanly:\n{report.format()}")
    model = VidEoMT(config)
    mismatched = {key for key, _, _ in report.shape_mismatches}
    load_exactly(model, {k: v for k, v in converted.items() if k not in mismatched},
                 what=f"VidEoMT ({config.backbone} backbone)", source=f"checkpoint {path}",
                 allow_missing={*report.missing_target, *mismatched})
    return model.eval(), report


def save_upstream(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write ``state`` (upstream layout, or any wrapper of it) to ``path`` atomically."""
    import torch

    write_atomically(path, lambda tmp: torch.save(state, tmp))
