"""mFormerV1 weights: two source checkpoints -> one model, and recognition of an mFormerV1 state dict.

An mFormerV1 is filled from a ConvNeXt and a RoPE-ViT checkpoint, both in timm's layout (the
original releases are converted to it first: :mod:`candidates.convnext.convert`,
:mod:`candidates.rope_vit.convert`). Each source has its table, read forward (source -> mFormerV1)
or backward (mFormerV1 -> the part of the source it holds)::

    ConvNeXt checkpoint            mFormerV1              RoPE-ViT checkpoint   mFormerV1
    stem.*                      -> stem.*                 cls_token          -> cls_token
    stages.0.*                  -> stages.0.*             rope.freqs         -> rope.freqs
    stages.1.*                  -> stages.1.*             blocks.*           -> blocks.*
    stages.2.downsample.*       -> downsample.*           norm.*, head.*     -> norm.*, head.*
    stages.2.blocks.*, stages.3.*, head.*  unused         patch_embed.*         unused

In the original ConvNeXt release's names the juncture is ``downsample_layers.2`` (index 0 is the
stem); the map follows the widths: only that downsample outputs width dims[2]. Unused keys, and
any key neither table knows, are returned in a :class:`LoadReport`, never dropped silently.

The reference hybrid (``reference/mformer.py``) is assembled from timm's modules under the same
names, so its transfer is the identity (:func:`convert_timm_state_dict`).

Recognition (:func:`recognize`): an mFormerV1 state dict holds a ConvNeXt stem, the juncture
``downsample`` and ``rope.freqs``; the ConvNeXt depths and widths and the ViT dims (heads derived
from ``rope.freqs``) are read off the shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from candidates.convnext.convert import convnext_dims
from candidates.io import StateDict, load_exactly
from candidates.mformer.config import check_juncture
from candidates.recognize import CheckpointInfo, count_parameters
from candidates.rope_vit.convert import rope_vit_dims
from harness.keymap import KeyTable, Rule

if TYPE_CHECKING:  # recognition runs without torch and the model file; only annotations name them
    import torch

    from candidates.mformer.mformer import MFormerV1

__all__ = [
    "CONVNEXT_PART", "ROPE_VIT_PART", "LoadReport", "convert_timm_state_dict", "split_convnext_state_dict",
    "split_rope_vit_state_dict", "load_mformer_from_state_dicts", "recognize",
]


CONVNEXT_PART = KeyTable(
    Rule("stem.", "stem."),
    Rule("stages.0.", "stages.0."),
    Rule("stages.1.", "stages.1."),
    Rule("stages.2.downsample.", "downsample."),  # the S2 juncture
    Rule("stages.2.", None),
    Rule("stages.3.", None),
    Rule("head.", None),
    name="ConvNeXt (timm layout) -> mFormerV1 trunk",
)

ROPE_VIT_PART = KeyTable(
    Rule("cls_token", "cls_token"),
    Rule("rope.freqs", "rope.freqs"),
    Rule("blocks.", "blocks."),
    Rule("norm.", "norm."),
    Rule("head.", "head."),
    Rule("patch_embed.", None),  # the juncture's tokens replace the patch embedding
    name="RoPE-ViT (timm layout) -> mFormerV1 blocks",
)


def convert_timm_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Reference hybrid (timm modules) -> candidate: the same names on both sides (identity, as a new dict)."""
    return dict(state_dict)


@dataclass
class LoadReport:
    """Which checkpoint keys went where; ``unused_*`` lists what the hybrid does not take."""

    used_convnext: list[str] = field(default_factory=list)
    unused_convnext: list[str] = field(default_factory=list)
    used_rope_vit: list[str] = field(default_factory=list)
    unused_rope_vit: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def groups(keys: list[str]) -> str:
            # stages.2.blocks.0.gamma -> stages.2, patch_embed.proj.weight -> patch_embed
            depth = lambda k: 2 if k.startswith("stages.") else 1
            return ", ".join(sorted({".".join(k.split(".")[:depth(k)]) for k in keys})) or "none"

        return (
            f"ConvNeXt: {len(self.used_convnext)} tensors used, "
            f"{len(self.unused_convnext)} unused ({groups(self.unused_convnext)}); "
            f"RoPE-ViT: {len(self.used_rope_vit)} tensors used, "
            f"{len(self.unused_rope_vit)} unused ({groups(self.unused_rope_vit)})"
        )


def _split(table: KeyTable, state_dict: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    mapping = table.map(state_dict, to="candidate", strict=False)
    return mapping.state, mapping.ignored + mapping.unmatched


def split_convnext_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """timm-layout ConvNeXt keys -> (mFormer keys, unused keys): :data:`CONVNEXT_PART` read forward."""
    return _split(CONVNEXT_PART, state_dict)


def split_rope_vit_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """timm-layout RoPE-ViT keys -> (mFormer keys, unused keys): :data:`ROPE_VIT_PART` read forward."""
    return _split(ROPE_VIT_PART, state_dict)


def load_mformer_from_state_dicts(
    model: MFormerV1,
    convnext_state: Mapping[str, torch.Tensor],
    rope_vit_state: Mapping[str, torch.Tensor],
) -> LoadReport:
    """Fill ``model`` from a ConvNeXt and a RoPE-ViT state dict (timm layouts), strictly."""
    juncture = convnext_state.get("stages.2.downsample.1.weight")
    cls_token = rope_vit_state.get("cls_token")
    if juncture is not None and cls_token is not None:
        dims = (
            convnext_state["stem.0.weight"].shape[0],
            convnext_state["stages.1.downsample.1.weight"].shape[0],
            juncture.shape[0],
        )
        check_juncture(dims, cls_token.shape[-1])
    convnext_part, unused_convnext = split_convnext_state_dict(convnext_state)
    vit_part, unused_vit = split_rope_vit_state_dict(rope_vit_state)
    cnx, vit = model.config.convnext, model.config.vit
    what = f"mFormerV1(convnext depths {list(cnx.depths[:2])}, dims {list(cnx.dims[:3])}, vit depth {vit.depth})"
    load_exactly(model, {**convnext_part, **vit_part}, what=what)
    return LoadReport(
        used_convnext=sorted(set(convnext_state) - set(unused_convnext)),
        unused_convnext=sorted(unused_convnext),
        used_rope_vit=sorted(set(rope_vit_state) - set(unused_vit)),
        unused_rope_vit=sorted(unused_vit),
    )


def recognize(state: Mapping[str, torch.Tensor], *, num_heads: int | None = None) -> CheckpointInfo | None:
    """An mFormerV1 state dict's ConvNeXt and ViT dims (heads derived from ``rope.freqs``); None otherwise."""
    if not ("stem.0.weight" in state and "downsample.1.weight" in state and "rope.freqs" in state):
        return None
    info = CheckpointInfo("mformer_v1", "timm", count_parameters(state), len(state))
    cnx = convnext_dims(state, stages=2, notes=info.notes)  # an mFormerV1 keeps ConvNeXt stages 0 and 1
    cnx["dims"].append(state["downsample.1.weight"].shape[0])
    vit, info.num_heads_source = rope_vit_dims(state, original=False, num_heads=num_heads, notes=info.notes)
    info.dims = {"convnext_depths": cnx["depths"], "convnext_dims": cnx["dims"],
                 "embed_dim": vit["embed_dim"], "depth": vit["depth"], "num_heads": vit["num_heads"]}
    return info
