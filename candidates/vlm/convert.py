"""The vlm family's weight layouts: one key table per DINOv3 layout, read both ways, and recognition.

Layouts and their tables (:mod:`harness.keymap`; every parameter is named, so a key that belongs to
none of them is reported instead of carried):

    transformers  ``transformers.DINOv3ViTModel`` <-> :class:`~candidates.vlm.dinov3.DinoV3ViT`
                  (:data:`TRANSFORMERS_TABLE`): ``embeddings.*``, ``model.layer.{i}.*``; the
                  separate ``q_proj``/``k_proj``/``v_proj`` weights are the rows of the fused
                  ``attn.qkv.weight``, ``q_proj.bias``/``v_proj.bias`` are ``q_bias``/``v_bias``;
                  the mask token (masked-image pretraining only) is known and not carried.
    timm          timm ``vit_*_patch16_dinov3`` (``Eva``) <-> :class:`DinoV3ViT`
                  (:data:`TIMM_TABLE`): the same names but for the layer scales (``gamma_1`` ->
                  ``ls1.gamma``); a classifier ``head`` and the key bias buffer (zero) are not carried.

Two checks no key table can make, because they depend on values rather than names, run before
the tables: DINOv3 has no key bias (a transformers ``k_proj.bias`` or a non-zero timm ``k_bias`` is
refused rather than dropped), and transformers' query and value biases come together. A
transformers model without registers stores an empty ``(1, 0, D)`` register tensor, which our model
has no parameter for; it is dropped because it holds no value.

Read backward (``to_*_state_dict``) the tables give the upstream keys the candidate's tensors
determine; the keys they ignore (the mask token, a classifier head) are not produced.

:data:`TRANSFORMERS_RENAME` and :data:`TIMM_RENAME` are the module-name rules the parity pairs
trace with (candidate module -> reference module, ``harness.Pair.rename``): modules without
parameters (the RoPE table, the q/k/v projection calls, the activation) have no key to map, so
they are named here next to the tables.

:func:`recognize` says whether a state dict is a DINOv3 ViT in one of these layouts, and its dims.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping

from candidates.io import StateDict
from candidates.recognize import (
    HEADS_ASSUMED, HEADS_GIVEN, CheckpointInfo, count_indices, count_parameters, missing_indices,
)
from candidates.rope_vit.convert import assume_heads, check_given_heads
from candidates.vlm.config import VARIANTS
from harness.keymap import KeyTable, Rule

if TYPE_CHECKING:  # recognition runs without torch (python -m harness inspect)
    import torch

__all__ = [
    "TRANSFORMERS_TABLE", "TIMM_TABLE", "TRANSFORMERS_RENAME", "TIMM_RENAME",
    "convert_transformers_state_dict", "convert_timm_state_dict", "to_transformers_state_dict",
    "to_timm_state_dict", "recognize",
]

_LAYER, _BLOCK = "model.layer.{i}.", "blocks.{i}."

TRANSFORMERS_TABLE = KeyTable(
    Rule("embeddings.cls_token", "cls_token"),
    Rule("embeddings.register_tokens", "reg_token"),
    Rule("embeddings.patch_embeddings.", "patch_embed.proj."),
    Rule(tuple(f"{_LAYER}attention.{p}_proj.weight" for p in "qkv"), f"{_BLOCK}attn.qkv.weight"),
    Rule(f"{_LAYER}attention.q_proj.bias", f"{_BLOCK}attn.q_bias"),
    Rule(f"{_LAYER}attention.v_proj.bias", f"{_BLOCK}attn.v_bias"),
    Rule(f"{_LAYER}attention.o_proj.", f"{_BLOCK}attn.proj."),
    Rule(f"{_LAYER}layer_scale1.lambda1", f"{_BLOCK}ls1.gamma"),
    Rule(f"{_LAYER}layer_scale2.lambda1", f"{_BLOCK}ls2.gamma"),
    Rule(f"{_LAYER}mlp.up_proj.", f"{_BLOCK}mlp.fc1."),
    Rule(f"{_LAYER}mlp.down_proj.", f"{_BLOCK}mlp.fc2."),
    Rule(f"{_LAYER}norm1.", f"{_BLOCK}norm1."),
    Rule(f"{_LAYER}norm2.", f"{_BLOCK}norm2."),
    Rule("norm.", "norm."),
    Rule("embeddings.mask_token", None),
    name="transformers DINOv3ViTModel",
)

TIMM_TABLE = KeyTable(
    Rule("cls_token", "cls_token"),
    Rule("reg_token", "reg_token"),
    Rule("patch_embed.proj.", "patch_embed.proj."),
    Rule(f"{_BLOCK}gamma_1", f"{_BLOCK}ls1.gamma"),
    Rule(f"{_BLOCK}gamma_2", f"{_BLOCK}ls2.gamma"),
    *(Rule(f"{_BLOCK}attn.{name}", f"{_BLOCK}attn.{name}") for name in ("qkv.weight", "q_bias", "v_bias")),
    *(Rule(f"{_BLOCK}{name}.", f"{_BLOCK}{name}.") for name in ("attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2")),
    Rule("norm.", "norm."),
    Rule(f"{_BLOCK}attn.k_bias", None),  # a zero buffer (checked first): DINOv3 has no key bias
    Rule("head.", None),  # a classifier; this is a feature encoder
    name="timm vit_*_patch16_dinov3",
)

# Candidate module names -> transformers names (applied in order, each to the previous result).
TRANSFORMERS_RENAME: tuple[tuple[str, str], ...] = (
    (r"^patch_embed\.proj$", "embeddings.patch_embeddings"),
    (r"^rope$", "rope_embeddings"),
    (r"^blocks\.(\d+)", r"model.layer.\1"),
    (r"\.attn$", ".attention"),
    (r"\.attn\.([qkv])_proj$", r".attention.\1_proj"),
    (r"\.attn\.proj$", ".attention.o_proj"),
    (r"\.ls([12])$", r".layer_scale\1"),
    (r"\.mlp\.fc1$", ".mlp.up_proj"),
    (r"\.mlp\.act$", ".mlp.act_fn"),
    (r"\.mlp\.fc2$", ".mlp.down_proj"),
)
# timm keeps the names; its layer scale is a parameter, whose product leaves through drop_path.
TIMM_RENAME: tuple[tuple[str, str], ...] = (
    (r"^rope$", "rope.cos_sin"),
    (r"\.ls([12])$", r".drop_path\1"),
)


# --------------------------------------------------------------------------- conversions


def convert_transformers_state_dict(state: Mapping[str, torch.Tensor]) -> StateDict:
    """``transformers.DINOv3ViTModel`` state dict -> :class:`DinoV3ViT` state dict (pure).

    ValueError: a key bias, a lone query or value bias, or a key no row knows (a gated MLP, a
    different model), named.
    """
    _check_transformers_biases(state)
    return TRANSFORMERS_TABLE.to_candidate(_without_empty_registers(state, "embeddings.register_tokens"))


def to_transformers_state_dict(state: Mapping[str, torch.Tensor]) -> StateDict:
    """:class:`DinoV3ViT` state dict -> ``DINOv3ViTModel`` keys (pure); no ``embeddings.mask_token``."""
    return TRANSFORMERS_TABLE.to_reference(state)


def convert_timm_state_dict(state: Mapping[str, torch.Tensor]) -> StateDict:
    """timm ``vit_*_patch16_dinov3`` (``Eva``) state dict -> :class:`DinoV3ViT` state dict (pure).

    A classifier ``head`` and a zero key bias are dropped. ValueError: a non-zero key bias, or a
    key no row knows (absolute position embeddings, SwiGLU MLPs, a different model), named.
    """
    for key, value in state.items():
        if key.endswith(".attn.k_bias") and value.count_nonzero():
            raise ValueError(f"{key}: a non-zero key bias is not supported (DINOv3 masks it to zero); "
                             f"this is not a DINOv3 checkpoint")
    return TIMM_TABLE.to_candidate(state)


def to_timm_state_dict(state: Mapping[str, torch.Tensor]) -> StateDict:
    """:class:`DinoV3ViT` state dict -> timm ``Eva`` keys (pure); no classifier head, no key bias buffer."""
    return TIMM_TABLE.to_reference(state)


def _check_transformers_biases(state: Mapping[str, torch.Tensor]) -> None:
    key_bias = sorted(k for k in state if re.fullmatch(r"model\.layer\.\d+\.attention\.k_proj\.bias", k))
    if key_bias:
        raise ValueError(f"a key bias is not supported (DINOv3 has none); got {key_bias[0]}"
                         f"{f' and {len(key_bias) - 1} more' if len(key_bias) > 1 else ''}")
    biased = (re.fullmatch(r"model\.layer\.(\d+)\.attention\.[qv]_proj\.bias", k) for k in state)
    for layer in sorted({m[1] for m in biased if m}):
        present = [f"{p}_proj.bias" for p in "qv" if f"model.layer.{layer}.attention.{p}_proj.bias" in state]
        if len(present) == 1:
            raise ValueError(f"layer {layer}: query and value biases must both be present or both absent, "
                             f"got only {present[0]}")


def _without_empty_registers(state: Mapping[str, torch.Tensor], key: str) -> Mapping[str, torch.Tensor]:
    if key in state and state[key].shape[1] == 0:
        return {k: v for k, v in state.items() if k != key}
    return state


# --------------------------------------------------------------------------- recognition

_LAYOUTS = (  # (layout, table, keys that only this layout stores together)
    ("transformers", TRANSFORMERS_TABLE,
     ("embeddings.patch_embeddings.weight", "model.layer.0.attention.q_proj.weight")),
    ("timm", TIMM_TABLE, ("cls_token", "patch_embed.proj.weight", "blocks.0.gamma_1", "blocks.0.attn.qkv.weight")),
)
_NOT_DINOV3 = ("pos_embed", "rope.freqs", "freqs")  # absolute positions, RoPE-Mixed ViT frequencies


def recognize(state: Mapping[str, torch.Tensor], *, num_heads: int | None = None) -> CheckpointInfo | None:
    """A :class:`CheckpointInfo` (family ``vlm``, layout ``transformers`` or ``timm``) or None.

    No DINOv3 layout stores the head count (the RoPE periods are not saved): ``num_heads`` gives
    it (source ``given``), else a released variant of the same width and depth, else head_dim 64
    (source ``assumed``, said in a note).
    """
    layout = next(((name, table) for name, table, keys in _LAYOUTS if all(k in state for k in keys)), None)
    if layout is None or any(k in state for k in _NOT_DINOV3):
        return None
    name, table = layout
    mapping = table.map(_without_empty_registers(state, "embeddings.register_tokens"), to="candidate", strict=False)
    notes = []
    if mapping.unmatched:
        notes.append(f"{len(mapping.unmatched)} keys no DINOv3 row knows, e.g. {mapping.unmatched[0]!r}")
    dims = _dims(mapping.state)
    missing_indices(mapping.state, r"blocks\.(\d+)\.", what="blocks", notes=notes)
    dims["num_heads"], source = _heads(dims, num_heads, notes)
    return CheckpointInfo(
        family="vlm",
        layout=name,
        num_params=count_parameters(state),
        num_tensors=len(state),
        variant=_variant(dims),
        dims=dims,
        notes=notes,
        num_heads_source=source,
    )


def _dims(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Dimensions read off the shapes of a candidate-layout state dict."""
    patch = state["patch_embed.proj.weight"]  # (D, C, p, p)
    return {
        "embed_dim": patch.shape[0],
        "depth": count_indices(state, r"blocks\.(\d+)\."),
        "num_heads": None,
        "patch_size": patch.shape[-1],
        "in_chans": patch.shape[1],
        "mlp_dim": state["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in state else None,
        "num_reg_tokens": state["reg_token"].shape[1] if "reg_token" in state else 0,
        "qkv_bias": "blocks.0.attn.q_bias" in state,
    }


def _heads(dims: Mapping[str, Any], num_heads: Any, notes: list[str]) -> tuple[int | None, str]:
    """(head count, its source): given and checked, else a released variant's or head_dim 64, said in a note."""
    if num_heads is not None:
        return check_given_heads(num_heads, dims["embed_dim"]), HEADS_GIVEN
    heads = assume_heads(dims["embed_dim"], dims["depth"], notes, variants=VARIANTS, stored="DINOv3 checkpoints",
                         released=lambda name: name)
    return heads, HEADS_ASSUMED


def _variant(dims: Mapping[str, Any]) -> str | None:
    for name, c in VARIANTS.items():
        if (c.embed_dim, c.depth, c.num_heads, c.patch_size, c.mlp_hidden_dim, c.num_reg_tokens, c.qkv_bias) == (
            dims["embed_dim"], dims["depth"], dims["num_heads"], dims["patch_size"], dims["mlp_dim"],
            dims["num_reg_tokens"], dims["qkv_bias"],
        ):
            return name
    return None
