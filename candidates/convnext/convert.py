"""ConvNeXt weight layouts: timm's (ours) and the original release's, one table read both ways.

Our ConvNeXt carries timm's parameter names and shapes, so the timm layout is the identity
(:func:`convert_timm_state_dict`). The original release (facebookresearch/ConvNeXt, files such as
``convnext_tiny_22k_1k_384.pth``) names the same tensors differently, and :data:`ORIGINAL` maps
them, read forward (original -> ours) or backward (ours -> original)::

    original release                     timm / this package
    downsample_layers.0.{0,1}.*          stem.{0,1}.*                      (conv 4x4/4, LayerNorm2d)
    downsample_layers.{i}.{0,1}.*        stages.{i}.downsample.{0,1}.*     (i = 1..3)
    stages.{i}.{j}.dwconv.*              stages.{i}.blocks.{j}.conv_dw.*
    stages.{i}.{j}.pwconv1.*, pwconv2.*  stages.{i}.blocks.{j}.mlp.fc1.*, mlp.fc2.*
    stages.{i}.{j}.norm.*, gamma         stages.{i}.blocks.{j}.norm.*, gamma
    norm.*                               head.norm.*
    head.*                               head.fc.*

Every tensor keeps its shape; a key no row knows is named in a ValueError.

Recognition (:func:`recognize`) reads the stage depths, the stage widths and the class count off
the shapes of either layout and names the released variant with exactly those depths and widths.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping

from candidates.convnext.config import VARIANTS
from candidates.io import StateDict
from candidates.recognize import CheckpointInfo, count_indices, count_parameters, missing_indices
from harness.keymap import KeyTable, Rule

if TYPE_CHECKING:  # recognition runs without torch (see candidates.recognize)
    from torch import Tensor

__all__ = [
    "ORIGINAL", "convert_timm_state_dict", "convert_original_convnext", "convnext_to_original", "convnext_dims",
    "match_variant", "recognize", "to_timm_layout",
]


ORIGINAL = KeyTable(
    Rule("downsample_layers.0.", "stem."),
    Rule("downsample_layers.{i}.", "stages.{i}.downsample."),
    Rule("stages.{i}.{j}.dwconv.", "stages.{i}.blocks.{j}.conv_dw."),
    Rule("stages.{i}.{j}.pwconv1.", "stages.{i}.blocks.{j}.mlp.fc1."),
    Rule("stages.{i}.{j}.pwconv2.", "stages.{i}.blocks.{j}.mlp.fc2."),
    Rule("stages.{i}.{j}.norm.", "stages.{i}.blocks.{j}.norm."),
    Rule("stages.{i}.{j}.gamma", "stages.{i}.blocks.{j}.gamma"),
    Rule("norm.", "head.norm."),
    Rule("head.", "head.fc."),
    name="ConvNeXt original release (facebookresearch/ConvNeXt) <-> timm layout",
)


def convert_timm_state_dict(state_dict: Mapping[str, Tensor]) -> StateDict:
    """timm ``convnext_*`` state dict -> ours (and back): the identity, as a new dict.

    Every parameter already carries timm's name and shape, so no key is renamed and no tensor is
    reshaped; the function exists so the transfer stays an explicit, tested step of the pair.
    """
    return dict(state_dict)


def convert_original_convnext(state_dict: Mapping[str, Tensor]) -> StateDict:
    """facebookresearch/ConvNeXt keys -> timm keys (:data:`ORIGINAL` read forward)."""
    return ORIGINAL.to_candidate(state_dict)


def convnext_to_original(state_dict: Mapping[str, Tensor]) -> StateDict:
    """timm ConvNeXt keys -> facebookresearch/ConvNeXt keys (:data:`ORIGINAL` read backward)."""
    return ORIGINAL.to_reference(state_dict)


# ---------------------------------------------------------------------------------------------
# Recognition
# ---------------------------------------------------------------------------------------------


def convnext_dims(state: Mapping[str, Tensor], *, stages: int = 4, notes: list[str] | None = None) -> dict[str, Any]:
    """Depths, per-stage widths and classes of the first ``stages`` stages of a timm-layout ConvNeXt
    state dict. A stage the file has no key of has depth and width None, and a gap in its blocks or
    its stages is named in ``notes``."""
    notes = [] if notes is None else notes
    depths: list[int | None] = []
    dims: list[int | None] = []
    for i in range(stages):
        if i > 0 and not any(k.startswith(f"stages.{i}.") for k in state):
            notes.append(f"stages.{i} has no keys: the checkpoint lacks a whole stage (a truncated or edited "
                         f"file?), so its depth and width are unknown")
            depths.append(None)
            dims.append(None)
            continue
        blocks = rf"stages\.{i}\.blocks\.(\d+)\."
        missing_indices(state, blocks, what=f"stages.{i}.blocks", notes=notes)
        if i > 0 and f"stages.{i}.downsample.1.weight" not in state:
            notes.append(f"stages.{i}.downsample.1.weight is missing: the stage's width is read off its blocks, "
                         f"and the checkpoint cannot build a ConvNeXt as it is")
        depths.append(count_indices(state, blocks))
        dims.append(_stage_width(state, i))
    out: dict[str, Any] = {"depths": depths, "dims": dims}
    if "head.fc.weight" in state:
        out["num_classes"] = state["head.fc.weight"].shape[0]
    return out


def _stage_width(state: Mapping[str, Tensor], stage: int) -> int | None:
    """Stage ``stage``'s width: the stem's or downsample's output channels, else its first stored
    block's depthwise channels."""
    conv = "stem.0.weight" if stage == 0 else f"stages.{stage}.downsample.1.weight"
    if conv in state:
        return state[conv].shape[0]
    depthwise = sorted((k for k in state if re.fullmatch(rf"stages\.{stage}\.blocks\.\d+\.conv_dw\.weight", k)),
                       key=lambda k: int(k.split(".")[3]))
    return state[depthwise[0]].shape[0] if depthwise else None


def match_variant(dims: Mapping[str, Any]) -> str | None:
    """``convnext_<name>`` of the released variant with exactly these depths and widths, else None."""
    for name, config in VARIANTS.items():
        if list(config.depths) == dims["depths"] and list(config.dims) == dims["dims"]:
            return f"convnext_{name}"
    return None


def _layout(state: Mapping[str, Tensor]) -> str | None:
    if "stem.0.weight" in state and any(k.startswith("stages.0.blocks.") for k in state):
        return "timm"
    if "downsample_layers.0.0.weight" in state and any(k.startswith("stages.0.0.") for k in state):
        return "original"
    return None


def recognize(state: Mapping[str, Tensor], *, num_heads: int | None = None) -> CheckpointInfo | None:
    """A ConvNeXt state dict's layout, dims and variant; None when ``state`` is no ConvNeXt.

    ``num_heads`` is accepted for the common signature; a ConvNeXt has no heads, so the info's
    ``num_heads_source`` stays None (and :func:`candidates.recognize.inspect_state_dict` refuses it).
    """
    layout = _layout(state)
    if layout is None:
        return None
    info = CheckpointInfo("convnext", layout, count_parameters(state), len(state))
    timm_state = state
    if layout == "original":
        mapping = ORIGINAL.map(state, to="candidate", strict=False)
        timm_state = mapping.state
        if mapping.unmatched:
            info.notes.append(f"keys outside the original layout, not counted in dims: {mapping.unmatched[:5]}"
                              + (f" (+{len(mapping.unmatched) - 5} more)" if len(mapping.unmatched) > 5 else ""))
    info.dims = convnext_dims(timm_state, notes=info.notes)
    info.variant = match_variant(info.dims)
    return info


def to_timm_layout(state: Mapping[str, Tensor], info: CheckpointInfo) -> tuple[StateDict, list[str]]:
    """(timm-layout state dict, dropped keys: none) for a state dict :func:`recognize` called a ConvNeXt."""
    if info.family != "convnext":
        raise ValueError(f"expected a convnext checkpoint, got family {info.family!r}")
    return (convert_original_convnext(state) if info.layout == "original" else dict(state)), []
