"""Checkpoint recognition: which family and layout a state dict is, and the dimensions its shapes reveal.

Each family's ``candidates/<family>/convert.py`` has ``recognize(state, *, num_heads=None)``: a
:class:`CheckpointInfo` when the state dict is one of its layouts, None otherwise. Dimensions come
from tensor shapes only. :func:`inspect_state_dict` asks the families in the fixed order of
:data:`FAMILIES` and the first that answers wins; the order matters where one family's keys
contain another's (an mFormerV1 holds a ConvNeXt stem and RoPE-ViT blocks, so it is asked first).
A state dict no family claims is reported as ``unknown`` with its tensor and parameter counts.

``num_heads`` is the RoPE-ViT head count, which the original RoPE-ViT release's layout does not
store. ``CheckpointInfo.num_heads_source`` says where the reported value comes from (in the text
output and in ``--json``): ``derived`` (read off a shape), ``given`` (passed by the user and
checked against the shapes) or ``assumed`` (see :mod:`candidates.rope_vit.convert`); None for a
family without heads, which refuses a given ``num_heads``.

The family modules are imported inside the loop: each imports :class:`CheckpointInfo` from here.
None of this imports torch: recognition reads shapes, and :func:`inspect_checkpoint` gives the
recognizers :class:`harness.headers.TensorHeader` s read off the file's header (milliseconds,
where importing torch takes seconds). A file that header reader leaves to torch (a legacy pickle,
an object it does not know) or a recognizer that needs values a header cannot give is loaded with
:func:`candidates.io.load_state_dict`; the answer is the same either way.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from candidates.io import load_state_dict, naming_file
from harness.headers import ValuesUnavailable, read_headers

if TYPE_CHECKING:
    import torch

__all__ = [
    "CheckpointInfo", "FAMILIES", "HEADS_ASSUMED", "HEADS_DERIVED", "HEADS_GIVEN", "count_indices",
    "missing_indices",
    "count_parameters", "inspect_checkpoint", "inspect_state_dict",
]

# asked in this order, first answer wins: mformer's keys include convnext's and rope_vit's
FAMILIES = ("mformer", "rope_vit", "convnext", "videomt", "vlm", "resampler")
HEADS_DERIVED, HEADS_GIVEN, HEADS_ASSUMED = "derived", "given", "assumed"  # CheckpointInfo.num_heads_source


@dataclass
class CheckpointInfo:
    """What a state dict is and the dimensions its shapes reveal."""

    family: str                       # convnext | rope_mixed_vit | mformer_v1 | ... | unknown
    layout: str | None                # timm | original | ... | None
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


def count_parameters(state: Mapping[str, torch.Tensor], *, excluding: Iterable[str] = ()) -> int:
    """Elements of the floating tensors of ``state``; ``excluding`` names derived buffers that are not parameters."""
    skip = set(excluding)
    return sum(v.numel() for k, v in state.items() if v.is_floating_point() and k not in skip)


def count_indices(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    """Number of distinct integers captured by ``pattern`` (group 1) over the keys: blocks, stages."""
    return len(_indices(state, pattern))


def missing_indices(state: Mapping[str, torch.Tensor], pattern: str, *, what: str, notes: list[str]) -> list[int]:
    """Indices below the largest that ``pattern`` (group 1) captures that no key has, each named in
    ``notes``: a file holding blocks 0, 1, 3 of a model was cut (or edited), and its count of 3 is
    not the model's depth."""
    found = _indices(state, pattern)
    missing = sorted(set(range(max(found) + 1)) - found) if found else []
    if missing:
        notes.append(f"{what}: {', '.join(map(str, missing))} missing from 0-{max(found)}: the checkpoint "
                     f"lacks part of the model (a truncated or edited file?), so the count shown is what it "
                     f"stores, not what the model had")
    return missing


def _indices(state: Mapping[str, torch.Tensor], pattern: str) -> set[int]:
    return {int(m.group(1)) for k in state if (m := re.match(pattern, k))}


def _recognizers() -> list[tuple[str, Callable[..., CheckpointInfo | None]]]:
    """(family, its ``recognize``) in :data:`FAMILIES` order."""
    return [(family, importlib.import_module(f"candidates.{family}.convert").recognize) for family in FAMILIES]


def inspect_state_dict(
    state: Mapping[str, torch.Tensor], *, path: str | None = None, num_heads: int | None = None
) -> CheckpointInfo:
    """Recognize the family and layout of ``state`` and infer its dimensions from shapes.

    ``num_heads`` gives the RoPE-ViT head count the original layout does not store; where a
    shape stores it (timm layout, mFormerV1), a different value is refused with a ValueError,
    and so is any ``num_heads`` for a state dict whose family has no heads to count.
    """
    recognizers = _recognizers()
    for family, recognize in recognizers:
        info = recognize(state, num_heads=num_heads)
        if info is not None:
            if num_heads is not None and info.num_heads_source is None:
                raise ValueError(f"num_heads applies to checkpoints with attention heads; {path or 'this state dict'} "
                                 f"is a {family} checkpoint, which has none: leave --num-heads out")
            info.path = path
            return info
    if num_heads is not None:
        raise ValueError(f"num_heads applies to checkpoints with attention heads; {path or 'this state dict'} is not "
                         f"a checkpoint of a known family: leave --num-heads out")
    tried = ", ".join(family for family, _ in recognizers)
    return CheckpointInfo(
        "unknown", None, count_parameters(state), len(state), path=path,
        notes=[f"not a state dict of a known family ({tried}); only counts are reported"],
    )


def inspect_checkpoint(path: str | os.PathLike, *, num_heads: int | None = None) -> CheckpointInfo:
    """:func:`inspect_state_dict` of the checkpoint file at ``path``; errors name the file.

    The tensors' headers suffice and need no torch; the file is loaded with torch only when the
    header reader cannot read it or a recognizer needs values it cannot give.
    """
    with naming_file(path):
        headers = read_headers(path)
        try:
            if headers is not None:
                return inspect_state_dict(headers, path=str(path), num_heads=num_heads)
        except ValuesUnavailable:
            pass
    state = load_state_dict(path)
    with naming_file(path):
        return inspect_state_dict(state, path=str(path), num_heads=num_heads)
