"""RoPE-Mixed ViT weight layouts: timm's (ours) and the original release's, one table read both ways.

Our model carries timm's parameter names and shapes (``vit_*_patch16_rope_mixed_224``), so the
timm layout is the identity (:func:`convert_timm_state_dict`; timm's grid buffers and ``k_bias``
are non-persistent and never appear). The original release (naver-ai/rope-vit,
``deit/models_v2_rope.py``, ``rope_mixed_deit_*_patch16_LS``) differs in the rotary frequencies
only; :data:`ORIGINAL` maps the keys, read forward (original -> ours) or backward::

    original release                          timm / this package
    freqs            (2, depth, dim // 2)     rope.freqs (2, depth, heads, head_dim // 2)   [reshape]
    freqs_t_x, freqs_t_y (grid buffers)       not stored: derived from the input size every call
    cls_token, patch_embed.proj.*             same
    blocks.i.{norm1,norm2,gamma_1,gamma_2}    same
    blocks.i.attn.{qkv,proj}.*                same
    blocks.i.mlp.{fc1,fc2}.*                  same
    norm.*, head.*                            same

The ``freqs`` reshape is not a rename: it needs the head count, which the original layout does
not store, so it is a small function beside the table (:func:`convert_original_state_dict`,
:func:`rope_vit_to_original`, which also writes back the grid buffers the release saves).

Head counts. Recognition (:func:`recognize`) reads every dimension off the shapes, and the head
count where a shape stores it: timm's (and mFormerV1's) ``rope.freqs`` (2, depth, heads,
head_dim/2) (``derived``). The original ``freqs`` (2, depth, embed_dim/2) flattens heads and
rotary pairs, and every other tensor (qkv (3C, C), proj, norms, layer scales, patch embedding,
head) has the same shape for any head split, so no tensor gives the count: it is ``given`` by the
user (``num_heads=``, ``--num-heads``; checked against embed_dim) or ``assumed``: a checkpoint
whose embed_dim and depth are a released variant's is assumed to have that variant's heads;
otherwise head_dim :data:`ASSUMED_HEAD_DIM` (``embed_dim // 64``; None when 64 does not divide
embed_dim). Building from an assumed count is refused unless the dims are a released variant's
(:func:`heads_for_build`): a wrong head split loads without a shape error and silently computes a
different model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

from candidates.io import StateDict, load_exactly
from candidates.recognize import (
    HEADS_ASSUMED, HEADS_DERIVED, HEADS_GIVEN, CheckpointInfo, count_indices, count_parameters, missing_indices,
)
from candidates.rope_vit.config import VARIANTS
from harness.checks import check_type, check_value
from harness.keymap import KeyTable, Rule

if TYPE_CHECKING:  # recognition runs without torch and the model file; only annotations name them
    import torch

    from candidates.rope_vit.rope_vit import RopeMixedViT

__all__ = [
    "ORIGINAL", "ORIGINAL_DERIVED_BUFFERS", "ASSUMED_HEAD_DIM", "convert_timm_state_dict", "is_original_layout",
    "convert_original_state_dict", "rope_vit_to_original", "load_rope_vit_state_dict", "head_counts",
    "check_given_heads", "assume_heads", "rope_vit_dims", "match_variant", "heads_for_build", "recognize", "to_timm_layout",
]

ASSUMED_HEAD_DIM = 64
ORIGINAL_DERIVED_BUFFERS = ("freqs_t_x", "freqs_t_y")
FAMILY = "rope_mixed_vit"

ORIGINAL = KeyTable(
    Rule("freqs", "rope.freqs"),  # and a reshape: convert_original_state_dict, rope_vit_to_original
    Rule("freqs_t_x", None),      # the training grid's token columns and rows, recomputed per input
    Rule("freqs_t_y", None),
    Rule("cls_token", "cls_token"),
    Rule("patch_embed.proj.", "patch_embed.proj."),
    Rule("blocks.{i}.norm1.", "blocks.{i}.norm1."),
    Rule("blocks.{i}.attn.qkv.", "blocks.{i}.attn.qkv."),
    Rule("blocks.{i}.attn.proj.", "blocks.{i}.attn.proj."),
    Rule("blocks.{i}.gamma_1", "blocks.{i}.gamma_1"),
    Rule("blocks.{i}.norm2.", "blocks.{i}.norm2."),
    Rule("blocks.{i}.mlp.fc1.", "blocks.{i}.mlp.fc1."),
    Rule("blocks.{i}.mlp.fc2.", "blocks.{i}.mlp.fc2."),
    Rule("blocks.{i}.gamma_2", "blocks.{i}.gamma_2"),
    Rule("norm.", "norm."),
    Rule("head.", "head."),
    name="RoPE-ViT original release (naver-ai/rope-vit) <-> timm layout",
)


def convert_timm_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """timm ``vit_*_patch16_rope_mixed_224`` state dict -> ours: the identity, as a new dict.

    Every parameter carries timm's name and shape; the function keeps the transfer an explicit step.
    """
    return dict(state_dict)


def is_original_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for the naver-ai release (top-level ``freqs``), False for timm's (``rope.freqs``)."""
    return "freqs" in state_dict and "rope.freqs" not in state_dict


def convert_original_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, num_heads: int
) -> tuple[StateDict, list[str]]:
    """Original-release keys -> this package's keys; returns (state dict, dropped derived keys).

    ``num_heads`` is needed because the original stores the frequencies with heads and pairs
    flattened together, ``(2, depth, heads * head_dim // 2)``.
    """
    _check_positive_heads(num_heads)
    if not is_original_layout(state_dict):
        raise ValueError("not an original-layout RoPE-ViT state dict: expected a top-level 'freqs' key")
    freqs = state_dict["freqs"]
    if freqs.ndim != 3 or freqs.shape[0] != 2 or freqs.shape[-1] % num_heads:
        raise ValueError(
            f"original 'freqs' must be (2, depth, heads * head_dim // 2) with heads={num_heads}, "
            f"got {tuple(freqs.shape)}"
        )
    mapping = ORIGINAL.map(state_dict, to="candidate")
    mapping.state["rope.freqs"] = freqs.reshape(2, freqs.shape[1], num_heads, -1)
    return mapping.state, mapping.ignored


def rope_vit_to_original(state_dict: Mapping[str, torch.Tensor], *, grid_size: tuple[int, int] = (14, 14)) -> StateDict:
    """timm RoPE-ViT keys -> naver-ai/rope-vit keys, with the grid buffers the release saves.

    ``freqs`` flattens heads and pairs; ``freqs_t_x``/``freqs_t_y`` are the column/row index of
    each token of the ``grid_size`` training grid (14 x 14 for 224 / 16).
    """
    out = ORIGINAL.to_reference(state_dict)
    freqs = out["freqs"]
    out["freqs"] = freqs.reshape(2, freqs.shape[1], -1)
    import torch  # here, not at module level: recognition imports this module without torch

    rows, cols = grid_size
    index = torch.arange(rows * cols, dtype=torch.float32, device=freqs.device)
    out["freqs_t_x"] = index % cols
    out["freqs_t_y"] = torch.div(index, cols, rounding_mode="floor")
    return out


def load_rope_vit_state_dict(model: RopeMixedViT, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Load either layout strictly into ``model``; returns the derived keys that were dropped."""
    if is_original_layout(state_dict):
        state, dropped = convert_original_state_dict(state_dict, num_heads=model.config.num_heads)
    else:
        state, dropped = dict(state_dict), []
    load_exactly(model, state, what=f"RopeMixedViT(embed_dim={model.config.embed_dim}, depth={model.config.depth})")
    return dropped


# ---------------------------------------------------------------------------------------------
# Head counts and recognition
# ---------------------------------------------------------------------------------------------


def head_counts(embed_dim: int) -> list[int]:
    """Head counts a RoPE-Mixed ViT of width ``embed_dim`` can have (head_dim divisible by 4)."""
    return [h for h in range(1, embed_dim + 1) if embed_dim % h == 0 and (embed_dim // h) % 4 == 0]


def check_given_heads(num_heads: Any, embed_dim: int) -> int:
    """``num_heads`` when it is a head count width ``embed_dim`` can have: a TypeError for a non-int, a
    ValueError naming the counts that fit otherwise."""
    _check_positive_heads(num_heads, fix=f"head counts that fit embed_dim {embed_dim}: {head_counts(embed_dim)}")
    if num_heads not in head_counts(embed_dim):
        raise ValueError(
            f"num_heads={num_heads} does not fit embed_dim {embed_dim}: head_dim = embed_dim / num_heads must be "
            f"an integer divisible by 4; head counts that fit: {head_counts(embed_dim)}"
        )
    return num_heads


def _check_positive_heads(num_heads: Any, *, fix: str | None = None) -> int:
    check_type("num_heads", num_heads, int, what="a positive int", fix=fix)
    return check_value("num_heads", num_heads, num_heads > 0, expected="a positive int", fix=fix)


def rope_vit_dims(
    state: Mapping[str, torch.Tensor], *, original: bool, num_heads: int | None, notes: list[str]
) -> tuple[dict[str, Any], str]:
    """(dims, num_heads_source) of a RoPE-ViT (or the ViT part of an mFormerV1) state dict."""
    embed_dim = state["cls_token"].shape[-1]
    depth = count_indices(state, r"blocks\.(\d+)\.")
    missing_indices(state, r"blocks\.(\d+)\.", what="blocks", notes=notes)
    if num_heads is not None:
        check_given_heads(num_heads, embed_dim)
    if original:
        if num_heads is not None:
            heads, source = num_heads, HEADS_GIVEN
        else:
            heads, source = assume_heads(embed_dim, depth, notes), HEADS_ASSUMED
    else:
        heads, source = _derived_heads(state["rope.freqs"], num_heads), HEADS_DERIVED
    out: dict[str, Any] = {"embed_dim": embed_dim, "depth": depth, "num_heads": heads}
    if "patch_embed.proj.weight" in state:
        out["patch_size"] = state["patch_embed.proj.weight"].shape[-1]
    if "blocks.0.mlp.fc1.weight" in state:
        out["mlp_dim"] = state["blocks.0.mlp.fc1.weight"].shape[0]
    if "head.weight" in state:
        out["num_classes"] = state["head.weight"].shape[0]
    return out, source


def _derived_heads(freqs: torch.Tensor, num_heads: int | None) -> int:
    """The head count ``rope.freqs`` (2, depth, heads, head_dim / 2) stores; a given one must agree."""
    if freqs.ndim != 4 or freqs.shape[0] != 2:
        raise ValueError(f"rope.freqs must be (2, depth, heads, head_dim / 2), got {tuple(freqs.shape)}")
    heads = freqs.shape[2]
    if num_heads is not None and num_heads != heads:
        raise ValueError(
            f"num_heads={num_heads} contradicts the checkpoint: rope.freqs {tuple(freqs.shape)} stores {heads} heads"
        )
    return heads


def assume_heads(
    embed_dim: int, depth: int, notes: list[str], *, variants: Mapping[str, Any] = VARIANTS,
    stored: str = "the original layout", released: Callable[[str], str] = lambda name: f"rope_mixed_vit_{name}",
) -> int | None:
    """A head count for a layout that does not store one: a released variant's of the same width
    and depth, else head_dim :data:`ASSUMED_HEAD_DIM`; a note says which and how to override it.
    ``stored`` names the layout and ``released`` a variant in those notes."""
    candidates = [(name, c) for name, c in variants.items() if (c.embed_dim, c.depth) == (embed_dim, depth)]
    fits = head_counts(embed_dim)
    if candidates:
        name, config = candidates[0]
        notes.append(
            f"num_heads is not stored in {stored}; assumed {config.num_heads} as in the released "
            f"{released(name)} (head_dim {config.head_dim}); pass --num-heads if this checkpoint differs "
            f"(head counts that fit embed_dim {embed_dim}: {fits})"
        )
        return config.num_heads
    heads = embed_dim // ASSUMED_HEAD_DIM if embed_dim % ASSUMED_HEAD_DIM == 0 else None
    notes.append(
        f"num_heads is not stored in {stored} and embed_dim {embed_dim} / depth {depth} match no "
        f"released variant; assumed head_dim {ASSUMED_HEAD_DIM} -> num_heads {heads}; building needs "
        f"--num-heads / num_heads= (head counts that fit: {fits})"
    )
    return heads


def match_variant(dims: Mapping[str, Any]) -> str | None:
    """``rope_mixed_vit_<name>`` of the released variant with these embed_dim, depth and heads, else None."""
    for name, config in VARIANTS.items():
        if (config.embed_dim, config.depth, config.num_heads) == (dims["embed_dim"], dims["depth"], dims["num_heads"]):
            return f"rope_mixed_vit_{name}"
    return None


def heads_for_build(info: CheckpointInfo) -> int:
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


def recognize(state: Mapping[str, torch.Tensor], *, num_heads: int | None = None) -> CheckpointInfo | None:
    """A RoPE-Mixed ViT state dict's layout, dims, head count and its source; None when it is none.

    ``num_heads`` gives the head count the original layout does not store; where ``rope.freqs``
    stores it, a different value is refused with a ValueError.
    """
    if "cls_token" not in state or not ("rope.freqs" in state or "freqs" in state):
        return None
    original = "rope.freqs" not in state
    # the original release's token grid indices are derived buffers, not parameters
    info = CheckpointInfo(FAMILY, "original" if original else "timm",
                          count_parameters(state, excluding=ORIGINAL_DERIVED_BUFFERS), len(state))
    info.dims, info.num_heads_source = rope_vit_dims(state, original=original, num_heads=num_heads, notes=info.notes)
    info.variant = match_variant(info.dims) if info.dims["num_heads"] is not None else None
    return info


def to_timm_layout(
    state: Mapping[str, torch.Tensor], info: CheckpointInfo, *, num_heads: int | None = None
) -> tuple[StateDict, list[str]]:
    """(timm-layout state dict, dropped derived keys) for a state dict :func:`recognize` called a RoPE-ViT.

    An original-layout RoPE-ViT needs its head count to un-flatten ``freqs``: ``num_heads``, else
    the one in ``info`` when derived or given (an assumed one only for a released variant's dims).
    """
    if info.family != FAMILY:
        raise ValueError(f"expected a {FAMILY} checkpoint, got family {info.family!r}")
    if num_heads is not None:
        path = info.path
        info = recognize(state, num_heads=num_heads)
        info.path = path
    if info.layout == "original":
        return convert_original_state_dict(state, num_heads=heads_for_build(info))
    return dict(state), []
