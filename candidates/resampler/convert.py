"""The resampler family's weight layouts: one key table per layout, read both ways, and recognition.

Layouts and their tables (:mod:`harness.keymap`; every parameter is named, so a key that belongs to
none of them is reported instead of carried):

    mixer     transformers ``MambaMixer`` <-> :class:`~candidates.resampler.mamba.MambaMixer`
              (:data:`MIXER_TABLE`): the same names (``in_proj``, ``conv1d``, ``x_proj``,
              ``dt_proj``, ``A_log``, ``D``, ``out_proj``) and shapes, so every row is an identity.
    bare      a :class:`~candidates.resampler.resampler.BiMambaResampler` state dict, as
              ``save_checkpoint`` writes it: ``input_proj``, ``blocks.{i}.norm``,
              ``blocks.{i}.{forward,backward}_block.<mixer>``, ``norm``, ``output_proj``.
    prefixed  the same keys under one prefix inside a training wrapper's state dict, e.g. a
              Lightning ``.ckpt`` holding ``resampler_module.resampler.input_proj.weight`` next to
              the vision encoder's and the language model's keys (:func:`resampler_table`).

Which prefix (:func:`select_prefix`): an explicit one, else the one recorded in the checkpoint's
metadata, else the only prefix directly followed by ``input_proj.weight`` (several, e.g. a model
and its EMA copy, is an error listing them). Keys outside the prefix belong to other modules and
are counted, not read; a key under it that no row knows is an error naming it.

The configuration a state dict implies is read off its shapes (:func:`infer_config`), each field
with the tensor it came from; :func:`recognize` reports the family, the layout and those dims.
Files, metadata and strict loading live in :mod:`candidates.resampler.checkpoint`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from candidates.io import StateDict
from candidates.recognize import CheckpointInfo, count_parameters
from candidates.resampler.config import VARIANTS
from harness.checks import check_type
from harness.keymap import KeyTable, Rule

if TYPE_CHECKING:  # recognition runs without torch (python -m harness inspect)
    import torch

__all__ = [
    "MIXER_TABLE", "FieldSource", "KeyPrefix", "find_prefixes", "infer_config", "recognize", "resampler_table",
    "select_prefix",
]

# Every tensor of a mixer, upstream's names and ours alike; prefixes carry ``weight``/``bias``.
_MIXER_TENSORS = ("in_proj.", "conv1d.", "x_proj.", "dt_proj.", "A_log", "D", "out_proj.")
_DIRECTIONS = ("forward_block", "backward_block")
_ANCHOR = "input_proj.weight"

MIXER_TABLE = KeyTable(*(Rule(t, t) for t in _MIXER_TENSORS), name="transformers MambaMixer")


@functools.lru_cache(maxsize=16)
def resampler_table(prefix: str = "") -> KeyTable:
    """The resampler's keys under ``prefix`` (reference side) <-> its bare keys (candidate side)."""
    mixers = [Rule(f"{prefix}blocks.{{i}}.{d}.{t}", f"blocks.{{i}}.{d}.{t}")
              for d in _DIRECTIONS for t in _MIXER_TENSORS]
    return KeyTable(
        Rule(f"{prefix}input_proj.", "input_proj."),
        Rule(f"{prefix}blocks.{{i}}.norm.", "blocks.{i}.norm."),
        *mixers,
        Rule(f"{prefix}norm.", "norm."),
        Rule(f"{prefix}output_proj.", "output_proj."),
        name=f"BiMamba resampler under prefix {prefix!r}" if prefix else "BiMamba resampler",
    )


# ---------------------------------------------------------------------------------------------
# Key prefixes: the resampler inside a bigger checkpoint
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSource:
    """Where a value (a config field, the key prefix) came from: ``metadata``, ``weights`` (with the
    tensor), ``defaults``, ``argument``, ``detected`` or ``none``."""

    kind: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind} ({self.detail})" if self.detail else self.kind


@dataclass(frozen=True)
class KeyPrefix:
    """The prefix the resampler's keys carry in a file, where it came from, and how many keys lie outside it."""

    value: str
    source: FieldSource
    ignored: int = 0

    def __str__(self) -> str:
        outside = f"; {self.ignored} keys outside it ignored" if self.ignored else ""
        return f"{self.value!r} <- {self.source}{outside}"


def find_prefixes(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Every prefix (``""`` or ending in ``.``) directly followed by ``input_proj.weight`` in a key."""
    return sorted(
        key[: -len(_ANCHOR)] for key in state
        if key == _ANCHOR or (key.endswith(_ANCHOR) and key[-len(_ANCHOR) - 1] == ".")
    )


def _normalize_prefix(prefix: str) -> str:
    check_type("prefix", prefix, str, what="a str such as 'resampler_module.resampler.'")
    return prefix if prefix == "" or prefix.endswith(".") else prefix + "."


def _choose_prefix(
    state: Mapping[str, torch.Tensor], prefix: str | None, recorded: str | None, where: str
) -> tuple[str, FieldSource]:
    """``prefix``, else ``recorded``, else the only detected one (see the module docstring)."""
    found = find_prefixes(state)
    if prefix is not None:
        prefix = _normalize_prefix(prefix)
        if recorded is not None and prefix != recorded:
            raise ValueError(f"{where}: prefix={prefix!r} contradicts the prefix {recorded!r} recorded in its metadata")
        if not any(key.startswith(prefix) for key in state):
            raise ValueError(
                f"{where}: no key starts with prefix {prefix!r}; prefixes followed by {_ANCHOR} in this file: {found}"
            )
        return prefix, FieldSource("argument")
    if recorded is not None:
        return recorded, FieldSource("metadata")
    if len(found) == 1:
        return found[0], FieldSource("detected", f"the only key ending in {_ANCHOR}: {found[0]}{_ANCHOR}")
    if not found:
        return "", FieldSource("none", f"no key ends in {_ANCHOR}")
    counts = [f"  {p!r}: {sum(k.startswith(p) for k in state)} keys" for p in found]
    raise ValueError(
        f"{where}: ambiguous key prefix: {len(found)} prefixes are followed by {_ANCHOR}:\n" + "\n".join(counts)
        + f"\nPick one with prefix={found[0]!r} (CLI: --prefix {found[0]})"
    )


def select_prefix(
    state: Mapping[str, torch.Tensor], *, prefix: str | None = None, recorded: str | None = None,
    where: str = "checkpoint",
) -> tuple[StateDict, KeyPrefix]:
    """The resampler's tensors in the bare layout, and the prefix they were found under.

    ``prefix`` (a missing trailing ``.`` is added) wins over ``recorded`` (from metadata), which
    wins over detection. ValueError, naming ``where``: no resampler under the prefix, or keys under
    it that are no resampler tensor, or an ambiguous or contradicted prefix. TypeError: a non-str
    ``prefix``.
    """
    chosen, source = _choose_prefix(state, prefix, recorded, where)
    mapping = resampler_table(chosen).map(state, to="candidate", strict=False)
    if _ANCHOR not in mapping.state:  # not a resampler at all: say that, not which keys are missing
        raise ValueError(
            f"{where}: not a resampler checkpoint: no key ends in {_ANCHOR} under prefix {chosen!r} "
            f"(first keys: {sorted(state)[:3]}); if the resampler sits under another prefix, pass prefix=... "
            f"(CLI --prefix)")
    stray = [key for key in mapping.unmatched if key.startswith(chosen)]
    if stray:
        raise ValueError(
            f"{where}: {len(stray)} keys under prefix {chosen!r} are no resampler tensor: {stray[:5]}"
            f"{' ...' if len(stray) > 5 else ''}; the resampler's keys are input_proj, blocks.<i>.norm, "
            f"blocks.<i>.(forward|backward)_block.<mixer>, norm and output_proj")
    return mapping.state, KeyPrefix(chosen, source, ignored=len(mapping.unmatched))


# ---------------------------------------------------------------------------------------------
# The configuration implied by the weights
# ---------------------------------------------------------------------------------------------

_MIXER = "blocks.0.forward_block"


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def infer_config(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[Any, str]]:
    """Config fields implied by tensor shapes of a bare state dict: ``{field: (value, "tensor (shape)")}``.

    Fields the weights do not determine (``norm_eps``, ``preset``; the mixer fields when
    ``depth == 0``) are absent. ValueError for a tensor of the wrong rank or odd block indices.
    """
    found: dict[str, tuple[Any, str]] = {}

    def tensor(key: str, ndim: int) -> torch.Tensor | None:
        t = state.get(key)
        if t is not None and t.ndim != ndim:
            raise ValueError(f"tensor {key} should have {ndim} dims, has shape {_shape(t)}")
        return t

    if (w := tensor("input_proj.weight", 2)) is not None:
        found["hidden_dim"] = (int(w.shape[0]), f"input_proj.weight {_shape(w)}")
        found["vision_dim"] = (int(w.shape[1]), f"input_proj.weight {_shape(w)}")
    if (w := tensor("output_proj.weight", 2)) is not None:
        found["out_dim"] = (int(w.shape[0]), f"output_proj.weight {_shape(w)}")
    indices = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if indices != list(range(len(indices))):
        raise ValueError(f"block indices must be 0..n-1, found {indices}")
    if "input_proj.weight" in state:  # only count blocks of something that is a resampler at all
        found["depth"] = (len(indices), f"blocks.* ({len(indices)} distinct indices)")
    if (w := tensor(f"{_MIXER}.in_proj.weight", 2)) is not None:
        if w.shape[0] % 2:
            raise ValueError(
                f"tensor {_MIXER}.in_proj.weight {_shape(w)} should have an even row count (signal + gate)")
        d_inner, hidden = w.shape[0] // 2, int(w.shape[1])
        found["expand"] = (d_inner / hidden, f"{_MIXER}.in_proj.weight {_shape(w)}: {d_inner} / {hidden}")
        found["bias"] = (f"{_MIXER}.in_proj.bias" in state, f"{_MIXER}.in_proj.bias present?")
    if (w := tensor(f"{_MIXER}.A_log", 2)) is not None:
        found["d_state"] = (int(w.shape[1]), f"{_MIXER}.A_log {_shape(w)}")
    if (w := tensor(f"{_MIXER}.conv1d.weight", 3)) is not None:
        found["d_conv"] = (int(w.shape[2]), f"{_MIXER}.conv1d.weight {_shape(w)}")
        found["conv_bias"] = (f"{_MIXER}.conv1d.bias" in state, f"{_MIXER}.conv1d.bias present?")
    if (w := tensor(f"{_MIXER}.dt_proj.weight", 2)) is not None:
        found["dt_rank"] = (int(w.shape[1]), f"{_MIXER}.dt_proj.weight {_shape(w)}")
    return found


# ---------------------------------------------------------------------------------------------
# Recognition
# ---------------------------------------------------------------------------------------------


def _holds_resampler(state: Mapping[str, torch.Tensor], prefix: str) -> bool:
    """``input_proj``, the final ``norm`` and ``output_proj`` under ``prefix``: the resampler's frame."""
    return all(f"{prefix}{name}.weight" in state for name in ("input_proj", "norm", "output_proj"))


def _variant(dims: Mapping[str, Any]) -> str | None:
    """The variant whose every weight-determined field equals ``dims``."""
    for name, config in VARIANTS.items():
        if all(getattr(config, field) == value for field, value in dims.items()):
            return name
    return None


def recognize(state: Mapping[str, torch.Tensor], *, num_heads: int | None = None) -> CheckpointInfo | None:
    """A :class:`CheckpointInfo` (family ``resampler``, layout ``bare`` or ``prefixed``) or None.

    With several resamplers in one file (a model and its EMA copy) the first prefix is described and
    the others are named in a note. A resampler has no attention heads: ``num_heads`` is not read,
    and ``num_heads_source`` stays None, so :func:`candidates.recognize.inspect_state_dict` refuses it.
    """
    prefixes = [p for p in find_prefixes(state) if _holds_resampler(state, p)]
    if not prefixes:
        return None
    prefix = prefixes[0]
    mapping = resampler_table(prefix).map(state, to="candidate", strict=False)
    dims = {field: value for field, (value, _) in infer_config(mapping.state).items()}
    notes = [f"key prefix {prefix!r}"] if prefix else []
    if mapping.unmatched:
        notes.append(f"{len(mapping.unmatched)} keys outside the resampler not counted, e.g. {mapping.unmatched[0]!r}")
    notes += [f"another resampler under prefix {p!r}; pass that prefix to load it" for p in prefixes[1:]]
    return CheckpointInfo(
        family="resampler",
        layout="prefixed" if prefix else "bare",
        num_params=count_parameters(mapping.state),
        num_tensors=len(mapping.state),
        variant=_variant(dims),
        dims=dims,
        notes=notes,
    )
