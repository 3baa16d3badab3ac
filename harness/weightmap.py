"""The weight map: which reference tensor(s) feed which candidate tensor, and by which transform.

A map is data, so that a person can read it, correct it and use it as a conversion script's
table. Each :class:`Entry` reads ``candidate key <- reference key(s) + steps``; the steps turn the
reference tensor(s) into the candidate's:

- ``concat`` (dim, sizes): several reference tensors into one (split ``q``/``k``/``v`` into ``qkv``);
- ``slice`` (dim, start, stop): one part of a fused reference tensor (``qkv`` into ``q``);
- ``reshape`` (shape), ``transpose`` (dims), ``permute`` (dims): another layout of the same
  values (``(C,)`` against ``(C, 1, 1)``, a 1x1 convolution against a linear layer);
- ``insert`` (dim, start, size, value, optional unread): a block of one constant the reference keeps
  as no tensor (the zero key bias of a fused ``qkv`` bias, against ``q_bias`` and ``v_bias``); read
  backward, its rows are dropped and checked to hold that constant. With ``unread`` true the
  candidate's forward never reads those rows (a class row of a position table whose patch rows alone
  are added), so whatever they hold is dropped unchecked;
- ``remove`` (dim, start, stop, unread): rows of a reference table its forward never reads, left
  out of the candidate's; read backward, they come back as zeros (an ``unread`` insert);
- ``gather`` (dim, index): the rows ``index`` lists, each as often as listed (a relative-position
  bias ``(heads, N, N)`` kept whole against a table of ``(2w - 1)^2`` rows the reference gathers
  through its index); read backward, each row comes from the first place that took it, and the
  places taking one row are checked to agree;
- ``fold_norm`` (part, eps, of): a batch norm's tensors folded into the ``scale`` or the ``shift``
  of a port computing ``x * scale + shift``; it loses values, so a map holding one is not read
  backward.

A reference tensor may feed several candidate tensors (a port keeping the head its reference ties
to the embedding, or a relative-position table per block where the reference shares one).

:meth:`WeightMap.to_candidate` reads the table forward, :meth:`WeightMap.to_reference` backward
(every step but a fold is invertible; of several candidate tensors fed by one reference tensor, the first
gives it back, and the others must hold the same), :meth:`WeightMap.transfer` copies a reference's
values into a candidate (two models the map fits only the other way round: :class:`ModelsSwapped`),
:meth:`WeightMap.save` / :func:`load_weight_map` keep it as JSON
(``"format": FORMAT``).
:meth:`WeightMap.twin_chains` and :meth:`WeightMap.fused_twins` tell which modules hold
corresponding tensors, for alignment. How a map is inferred: :mod:`harness.weights`.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from itertools import permutations
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from harness.checks import check_module, is_int_list, one_line
from harness.keymap import Move, StateDict, Step, apply_moves, check_step, describe_steps, invert_steps, shape_after
from harness.metrics import percent
from harness.trace import ROOT, eager_module

__all__ = ["WeightMap", "Entry", "ModelsSwapped", "load_weight_map", "FORMAT", "layout_steps", "owner_of",
           "clear_weight_caches", "regrouped_rows", "regrouped_columns", "tied_copies"]

FORMAT = "parity-harness weight map 1"
NEVER_USED = "never used by the forward on these inputs, and no unused counterpart in order"
# the reason of a reference tensor the candidate replaces by reading one of its own tensors again
STANDS_IN = "feeds nothing in the candidate: where the reference reads it, the candidate reads"


class ModelsSwapped(ValueError):
    """A map that fits the two models only the other way round: they were given in each other's place."""

    def __init__(self, call: str) -> None:
        super().__init__(f"the candidate and the reference look swapped: the weight map's candidate tensors are those "
                         f"of the model given as the reference, and its reference tensors those of the one given as "
                         f"the candidate; call {call}")


# -- transforms as data (steps: harness.keymap) --------------------------------------------------
def layout_steps(target: tuple[int, ...], source: tuple[int, ...]) -> tuple[list[Step], float] | None:
    """Steps turning a tensor of shape ``source`` into ``target`` (and a penalty), or None."""
    if target == source:
        return [], 0.0
    if math.prod(target) != math.prod(source):
        return None
    squeeze_t = tuple(d for d in target if d != 1)
    squeeze_s = tuple(d for d in source if d != 1)
    if squeeze_t == squeeze_s:  # (C,) <-> (C, 1, 1), conv 1x1 <-> linear, (1, N, D) <-> (N, D)
        return [{"op": "reshape", "shape": list(target)}], 0.02
    if len(target) == len(source) == 2 and target == source[::-1]:
        return [{"op": "transpose", "dims": [0, 1]}], 0.05
    if len(target) == len(source) and sorted(target) == sorted(source) and len(target) <= 6:
        dims = next(iter(shape_permutations(target, source)))
        return [{"op": "permute", "dims": list(dims)}], 0.08
    moved = _moved_groups(target, source) if target[0] == source[0] == 1 else None
    if moved is not None:  # a leading 1 broadcasts a table over the batch: its channels moved, not reshaped
        return moved, 0.1
    if len(target) >= 2 and len(source) >= 2 and target[0] == source[0]:
        # a patch-embedding convolution (D, C, p, p) against a linear layer (D, C*p*p)
        return [{"op": "reshape", "shape": list(target)}], 0.1
    if len(target) >= 2 and len(source) >= 2 and target[-1] == source[-1]:
        # output rows split or merged: a fused qkv weight (3, heads, head_dim, C) against (3C, C)
        return [{"op": "reshape", "shape": list(target)}], 0.1
    blocks = _column_blocks(target, source)
    if blocks is not None:
        return blocks, 0.12
    if len(target) == 1 or len(source) == 1:
        # a vector against its split form: a fused qkv bias (3, heads, head_dim) against (3C,)
        return [{"op": "reshape", "shape": list(target)}], 0.12
    moved = None if target[0] == source[0] == 1 else _moved_groups(target, source)  # tried first there
    if moved is not None:
        return moved, 0.15
    return None


def _moved_groups(target: tuple[int, ...], source: tuple[int, ...]) -> list[Step] | None:
    """Steps between two layouts of one table whose leading and trailing groups of dims trade places,
    each group merged or split on the way: a ``(1, C, h, w)`` map against the ``(h * w, C)`` tokens
    ``flatten(2).transpose(1, 2)`` makes of it. Size-1 dims aside, ``source`` is cut into a head and
    a tail, and ``target`` must hold the tail's elements in its leading dims and the head's in the
    rest; the first such cut of ``source`` is taken. None if no cut fits."""
    dims_s = [d for d in source if d != 1]
    dims_t = [d for d in target if d != 1]
    for cut in range(1, len(dims_s)):
        head, tail = math.prod(dims_s[:cut]), math.prod(dims_s[cut:])
        lead = next((k for k in range(1, len(dims_t)) if math.prod(dims_t[:k]) >= tail), None)
        if lead is not None and math.prod(dims_t[:lead]) == tail and math.prod(dims_t[lead:]) == head:
            steps = [{"op": "reshape", "shape": [head, tail]}, {"op": "transpose", "dims": [0, 1]}]
            return steps if [tail, head] == list(target) else [*steps, {"op": "reshape", "shape": list(target)}]
    return None


def _column_blocks(target: tuple[int, ...], source: tuple[int, ...]) -> list[Step] | None:
    """Steps between a projection of concatenated inputs, ``(out, n * in)`` (a 1x1 convolution's
    kernel dims aside), and its ``n`` blocks of input columns stacked ``(n, out, in)``: a port summing
    one projection per branch (``sum(x_k @ W[k].T)``) where its twin projects the concatenation of
    the branches (ASPP). None for any other pair of shapes."""
    def matrix(shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape[:2] if len(shape) >= 2 and all(d == 1 for d in shape[2:]) else ()

    if len(target) == 3 and 1 not in target and matrix(source) == (target[1], target[0] * target[2]):
        n, out, width = target
        return [{"op": "reshape", "shape": [out, n, width]}, {"op": "permute", "dims": [1, 0, 2]}]
    if len(source) == 3 and 1 not in source and matrix(target) == (source[1], source[0] * source[2]):
        return [{"op": "permute", "dims": [1, 0, 2]}, {"op": "reshape", "shape": list(target)}]
    return None


# kernel layouts of other frameworks, tried before any other order when several permutations fit:
# TF/JAX HWIO <-> torch OIHW, and channels-last OHWI <-> OIHW
_KNOWN_PERMUTES = ((3, 2, 0, 1), (2, 3, 1, 0), (0, 3, 1, 2), (0, 2, 3, 1))


def shape_permutations(target: tuple[int, ...], source: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every permutation of ``source``'s dims giving ``target``: the known kernel layouts first,
    then in lexicographic order (the stablest first). Verification picks among them when several fit."""
    if len(target) != len(source) or sorted(target) != sorted(source) or len(target) > 6:
        return []
    fits = [dims for dims in permutations(range(len(source))) if tuple(source[d] for d in dims) == target
            and list(dims) != sorted(dims)]
    return sorted(fits, key=lambda dims: dims not in _KNOWN_PERMUTES)  # stable: lexicographic within each


# -- the map --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """``candidate`` <- ``reference`` tensors (one, or several to concatenate) through ``steps``."""

    candidate: str
    reference: tuple[str, ...]
    steps: tuple[Step, ...] = ()
    shape: tuple[int, ...] = ()  # the candidate tensor's shape
    reference_shapes: tuple[tuple[int, ...], ...] = ()
    kind: str = "parameter"  # or "buffer"

    @property
    def transform(self) -> str:
        return describe_steps(self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "reference": list(self.reference), "transform": list(self.steps),
                "shape": list(self.shape), "reference_shapes": [list(s) for s in self.reference_shapes],
                "kind": self.kind}


@dataclass
class WeightMap:
    """Which reference tensor feeds which candidate tensor, and how (see the module docstring).

    Attributes:
        entries: one per mapped candidate tensor, in the candidate's first-use order.
        unmatched: ``{"candidate": [...], "reference": [...]}`` state-dict keys (parameters and
            learned buffers) without a counterpart; ``reasons`` says why for each.
        computed: buffers each side computes itself (index tables, periods), never copied.
        conflicts: twin modules that still disagree after transfer (the map, or the model, is
            wrong there); empty when ``verified``.
    """

    entries: list[Entry]
    unmatched: dict[str, list[str]]
    reasons: dict[str, str] = field(default_factory=dict)
    computed: dict[str, list[str]] = field(default_factory=lambda: {"candidate": [], "reference": []})
    candidate_numel: int = 0  # parameter elements of the candidate, for coverage
    verified: bool | None = None  # None: not verified
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # twins seen agreeing when the map was verified, among modules holding the same tensors as
    # others (a block and the branch inside it): a comparison with an error keeps them, where its
    # own outputs could not tell them apart
    twins: dict[str, str] = field(default_factory=dict)

    # -- contract --------------------------------------------------------------------------------
    @property
    def coverage(self) -> float:
        """Share of the candidate's parameter elements that receive a reference value."""
        if self.candidate_numel == 0:
            return 1.0
        mapped = sum(math.prod(e.shape) for e in self.entries if e.kind == "parameter")
        return mapped / self.candidate_numel

    def transfer(self, reference: nn.Module, candidate: nn.Module) -> None:
        """Copy the reference's current values into the candidate, in place (shapes checked)."""
        reference, candidate = eager_module(check_module("reference", reference)), eager_module(check_module("candidate", candidate))
        sources, targets = _named_tensors(reference), _named_tensors(candidate)
        self._check_tensors_fit(targets, sources, called=("transfer(reference, candidate)", candidate, reference))
        values = self.to_candidate(sources)
        with torch.no_grad():
            for key, value in values.items():
                target = targets[key]
                if tuple(target.shape) != tuple(value.shape):
                    raise ValueError(f"weight map entry {key!r}: candidate tensor has shape {tuple(target.shape)}, "
                                     f"the transform gives {tuple(value.shape)}; the map was made for another model")
                target.copy_(value.to(device=target.device, dtype=target.dtype))
        clear_weight_caches(candidate)

    def check_fits(self, candidate: nn.Module | None, reference: nn.Module | None = None, *,
                   called: tuple[str, nn.Module, nn.Module] | None = None) -> None:
        """ValueError unless every entry names a tensor of ``candidate`` of its shape, and every
        reference key one of ``reference`` (each when given): a map made for another version of a
        model would pair and fill the wrong tensors. ``called``: the call, with its candidate and
        reference as given, whose error says so when the map fits them the other way round."""
        self._check_tensors_fit(*(None if m is None else _named_tensors(eager_module(m)) for m in (candidate, reference)),
                                called=called)

    def _check_tensors_fit(self, candidate: dict[str, torch.Tensor] | None,
                           reference: dict[str, torch.Tensor] | None, *,
                           called: tuple[str, nn.Module, nn.Module] | None = None) -> None:
        """:meth:`check_fits` on the models' tensors by key."""
        for side, tensors, keys in (("candidate", candidate, self._keys("candidate")),
                                    ("reference", reference, self._keys("reference"))):
            if tensors is None:
                continue
            misfits = _not_held(keys, tensors)
            missing = [k for k in misfits if k not in tensors]
            resized = [f"{k} {tuple(tensors[k].shape)} (the map: {tuple(keys[k])})" for k in misfits if k in tensors]
            if missing or resized:
                if called is not None and self._fits_swapped(*called[1:]):
                    raise ModelsSwapped(called[0])
                found = (f"names {len(missing)} {side} tensor(s) the {side} does not have: {_shown(missing, 5)}"
                         if missing else f"gives {side} tensors other shapes than they have: {_shown(resized, 3)}")
                raise ValueError(f"the weight map {found}; it was made for another model: build it for these models "
                                 f"(harness.map_weights, or `python -m harness map`) or correct those entries")

    def _keys(self, side: str) -> dict[str, tuple[int, ...]]:
        """The tensors the map names on ``side``, with the shapes it gives them."""
        if side == "candidate":
            return {e.candidate: e.shape for e in self.entries}
        return {k: s for e in self.entries for k, s in zip(e.reference, e.reference_shapes)}

    def _fits_swapped(self, candidate: nn.Module, reference: nn.Module) -> bool:
        """Whether the map fits ``reference`` as its candidate and ``candidate`` as its reference."""
        return not _not_held(self._keys("candidate"), _named_tensors(reference)) \
            and not _not_held(self._keys("reference"), _named_tensors(candidate))

    def fitted(self, candidate: nn.Module) -> tuple["WeightMap", list[str]]:
        """This map as it stands for ``candidate``, and the entries it drops: those naming a tensor
        the candidate does not have or gives another shape (a parameter removed or a layer wrapped
        since the map was made: pairing through them would pair the wrong modules). A tensor of the
        candidate that the map neither fills nor lists (an entry deleted by hand, a layer added) is
        unmatched with that reason, and coverage counts the candidate's parameters."""
        tensors = _named_tensors(candidate)
        stale = _not_held({e.candidate: e.shape for e in self.entries}, tensors)
        known = {e.candidate for e in self.entries} | set(self.unmatched.get("candidate", [])) \
            | set(self.computed.get("candidate", []))
        absent = [k for k, t in tensors.items() if k not in known and t.is_floating_point()]
        numel = sum(p.numel() for p in candidate.parameters())
        if not absent and not stale and numel == self.candidate_numel:
            return self, []
        reasons = {**self.reasons, **{k: "the map has no entry for it and does not list it: an entry removed, or a "
                                         "tensor added since the map was made" for k in absent}}
        unmatched = {**self.unmatched, "candidate": [*self.unmatched.get("candidate", []), *absent]}
        entries = [e for e in self.entries if e.candidate not in stale]
        return replace(self, entries=entries, unmatched=unmatched, reasons=reasons, candidate_numel=numel), stale

    def output_adapters(self) -> list[tuple[str, Any]]:
        """``(regex on a candidate module name, fn)`` for each module whose weight's output rows the
        map regroups (a fused ``qkv`` laid out per head, ``(heads, 3, head_dim)``, against ``(3,
        heads, head_dim)``): its output holds its twin's features in that order, and ``fn`` brings
        them into the twin's."""
        out = []
        for e in self.entries:
            groups = _row_regrouping(e)
            if groups is not None:
                out.append((f"^{re.escape(owner_of(e.candidate) or ROOT)}$", _FeatureOrder(*groups)))
        return out

    def to_candidate(self, reference_state: Mapping[str, torch.Tensor]) -> StateDict:
        """Candidate tensors (by candidate key) from a reference state dict."""
        return apply_moves(self.moves("candidate"), reference_state, what="reference state")

    def reason(self, side: str, key: str) -> str:
        """Why ``side``'s tensor ``key`` has no counterpart (a key both models use keeps the
        reference's reason under ``reference:KEY``)."""
        return self.reasons.get(f"{side}:{key}") or self.reasons.get(key, "no counterpart")

    def unfilled(self) -> list[str]:
        """Candidate tensors the forward reads that the map gives no value: after a transfer they
        keep whatever they held."""
        return [k for k in self.unmatched.get("candidate", []) if self.reason("candidate", k) != NEVER_USED]

    def untaken(self) -> list[str]:
        """Reference tensors its forward reads that no candidate tensor takes: the candidate computes
        without them (a position table it never adds), or the map missed their counterpart."""
        return [k for k in self.unmatched.get("reference", []) if self.reason("reference", k) != NEVER_USED]

    def caveat(self, *, given: bool) -> str | None:
        """Why a failing comparison through this map may be the map's fault rather than the model's:
        tensors the forward reads that it leaves unfilled, reference tensors no candidate tensor
        takes, or (for a map ``given`` by the caller) a verification that failed or never ran; None
        when there is nothing to say."""
        unfilled, untaken = self.unfilled(), self.untaken()
        if unfilled:
            return (f"the weight map gives no value to {len(unfilled)} candidate tensor(s) the forward reads "
                    f"({_shown(unfilled)}): unless they were filled another way, the failure may be the transfer, "
                    f"not the model (see the map's reasons; give their sources in the map, or fill them by hand)")
        shared = [k for k in untaken if self.reason("reference", k).startswith(STANDS_IN)]
        if shared and len(shared) == len(untaken):
            return (f"the candidate applies tensors again where the reference applies {len(shared)} tensor(s) of its "
                    f"own ({_shown(shared)}): the two agree only where those hold the values the candidate's tensors "
                    f"took (see the map's reasons)")
        if untaken:
            return (f"the reference's forward reads {len(untaken)} tensor(s) that no candidate tensor takes "
                    f"({_shown(untaken)}): the candidate computes without them (a position table or a bias it "
                    f"never adds), or the map missed their counterpart")
        if given and self.verified is False:
            where = ", ".join(str(c["module"]) for c in self.conflicts[:4] if c.get("module"))
            return (f"the weight map is NOT verified (its own check found disagreements{f' at {where}' if where else ''}):"
                    f" the failure may be the map's, not the model's")
        if given and self.verified is None:
            return "the weight map was not verified (harness.map_weights(..., verify=True) checks it by transfer)"
        return None

    def expected(self, candidate_key: str, reference_state: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """What the map puts into one candidate tensor from ``reference_state``; None when the map
        has no entry for it or the state lacks a source."""
        entry = next((e for e in self.entries if e.candidate == candidate_key), None)
        if entry is None or any(k not in reference_state for k in entry.reference):
            return None
        return _forward_move(entry).apply(reference_state)[candidate_key]

    def to_reference(self, candidate_state: Mapping[str, torch.Tensor], *, strict: bool = True) -> StateDict:
        """The table read backward: reference tensors (by reference key) from candidate tensors.

        Two readings lose values, and are checked: where several candidate tensors take one
        reference tensor (a port keeping the head a reference ties to its embedding), the first
        entry's tensor gives it its values; where an entry inserts constant rows (the zero key bias
        of a fused ``qkv`` bias), they are dropped. With ``strict`` a ValueError names each
        candidate tensor the result would not give back (a tied copy that differs, inserted rows
        that are not the constant): the reference cannot hold what it holds. ``strict=False``
        takes the first tensor and drops the rows without a check."""
        out = apply_moves(self.moves("reference"), candidate_state, what="candidate state")
        if strict:
            _check_given_back(self.entries, out, candidate_state)
        return out

    def moves(self, to: str) -> list[Move]:
        """The table as :class:`harness.keymap.Move` rows toward ``to`` ("candidate" or "reference"):
        the same engine that reads the families' conversion tables. Toward the reference, a
        reference tensor several entries take is given by the first of them (see :meth:`to_reference`)."""
        if to == "candidate":
            return [_forward_move(e) for e in self.entries]
        folded = [f"{e.candidate} <- {' + '.join(e.reference)}" for e in self.entries if _folds(e)]
        if folded:
            raise ValueError(f"the weight map folds batch norms into {len(folded)} candidate tensor(s) "
                             f"({_shown(folded, 2)}): a fold "
                             f"keeps two tensors of a norm's four, so the reference's cannot be read back from the "
                             f"candidate; read the map toward the candidate only, or give those entries by hand")
        cuts: dict[str, list[Entry]] = {}
        moves = []
        for e in _first_readers(self.entries):
            if any(s["op"] == "slice" for s in e.steps):
                cuts.setdefault(e.reference[0], []).append(e)
            else:
                moves.append(_backward_move(e))
        return moves + [_joining_move(key, parts) for key, parts in cuts.items()]

    def twin_chains(self, candidate: nn.Module, reference: nn.Module) -> list[tuple[list[str], list[str]]]:
        """Modules whose subtrees hold exactly corresponding tensors (roots as ``<root>``): per set
        of tensors, the candidate modules holding it and the reference modules holding its
        sources, each outer to inner (wrappers around the same tensors form a chain)."""
        return _twin_chains(self, candidate, reference)

    def tensor_links(self) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """``(sources, sinks)``: each candidate key's reference keys, and each reference key's
        candidate keys, over the entries that tell which module holds a tensor."""
        # a folded batch norm's buffers (scale, shift) twin the module holding the norm's tensors
        entries = [e for e in self.entries if e.kind == "parameter" or e.steps == () or _folds(e)]
        sources = {e.candidate: set(e.reference) for e in entries}
        sinks: dict[str, set[str]] = {}
        # a reference tensor several candidate tensors take whole (a head tied to the embedding) twins
        # the module of the first: the copies' modules compute another use of it
        for e in _first_readers(entries):
            for r in e.reference:
                sinks.setdefault(r, set()).add(e.candidate)
        return sources, sinks

    def remember_twins(self, candidate: nn.Module, reference: nn.Module, agreeing: Mapping[str, str]) -> None:
        """Keep, of ``agreeing`` (candidate -> reference modules whose outputs agreed), the twins of
        chains with a choice (see :attr:`twins`)."""
        chosen = {}
        for cs, rs in self.twin_chains(candidate, reference):
            if len(cs) > 1 or len(rs) > 1:
                chosen.update({c: agreeing[c] for c in cs if agreeing.get(c) in rs})
        self.twins = chosen

    def fused_twins(self) -> list[tuple[str, str, tuple[str, ...], tuple[int, int, int] | None]]:
        """Twins of fused and split modules: ``("concat", candidate module, reference modules, None)``
        when a candidate module's tensors are concatenations of several reference modules' tensors
        (its output is theirs, concatenated), ``("slice", candidate module, (reference module,),
        (start, stop, fused size))`` when they are one slice of a reference module's tensors."""
        by_owner: dict[str, list[Entry]] = {}
        for e in self.entries:
            by_owner.setdefault(owner_of(e.candidate), []).append(e)
        out = []
        for owner, entries in by_owner.items():
            # a bias with zeros inserted for a layer without one joins the layers that have one
            kinds = {"concat" if e.steps and e.steps[0]["op"] == "insert" else e.steps[0]["op"] if e.steps else "one"
                     for e in entries}
            if kinds == {"concat"}:
                sources = {tuple(owner_of(k) for k in e.reference) for e in entries}
                whole = max(sources, key=len)
                if all(_in_order(part, whole) for part in sources) and len(set(whole)) > 1 and all(
                        len(part) == len(whole) or any(st["op"] == "insert" for st in e.steps)
                        for e, part in ((e, tuple(owner_of(k) for k in e.reference)) for e in entries)):
                    out.append(("concat", owner or ROOT, whole, None))
            cuts = {(tuple(owner_of(k) for k in e.reference),
                     next(((st["start"], st["stop"], shape_after(e.steps[:e.steps.index(st)], e.reference_shapes[0])[0])
                           for st in e.steps if st["op"] == "slice" and st["dim"] == 0), None)) for e in entries}
            if len(cuts) == 1:
                (sources, cut), = cuts
                if cut is not None and len(sources) == 1:
                    out.append(("slice", owner or ROOT, sources, cut))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready table (``format``, ``entries``, ``unmatched`` with reasons, ``computed``, ``coverage``)."""
        return {
            "format": FORMAT,
            "coverage": self.coverage,
            "verified": self.verified,
            # what was verified: a file whose entries were edited since is read back as unverified
            "verified_entries": _digest([e.to_dict() for e in self.entries]),
            "entries": [e.to_dict() for e in self.entries],
            "unmatched": self.unmatched,
            "reasons": self.reasons,
            "computed": self.computed,
            "conflicts": self.conflicts,
            "candidate_numel": self.candidate_numel,
            "notes": self.notes,
            "twins": self.twins,
        }

    def save(self, path: str | os.PathLike) -> str:
        """Write the table as JSON, atomically; returns the path."""
        from harness.files import atomic_write_text

        return str(atomic_write_text(path, json.dumps(self.to_dict(), indent=1)))

    def __str__(self) -> str:
        lines = [f"weight map: {len(self.entries)} candidate tensors <- reference, coverage {percent(self.coverage)} "
                 f"of candidate parameter elements"
                 + {True: ", verified", False: ", NOT verified (see conflicts)", None: ", not verified"}[self.verified]]
        width = max((len(e.candidate) for e in self.entries), default=0)
        for e in self.entries:
            lines.append(f"  {e.candidate.ljust(width)} <- {' + '.join(e.reference)}"
                         + ("" if not e.steps else f"  [{e.transform}]"))
        for side in ("candidate", "reference"):
            for key in self.unmatched.get(side, []):
                lines.append(f"  unmatched {side} {key}: {self.reason(side, key)}")
        computed = self.computed.get("candidate", []) + self.computed.get("reference", [])
        if computed:
            lines.append(f"  computed by each model, not copied: {', '.join(computed[:8])}"
                         + (f", ... (+{len(computed) - 8})" if len(computed) > 8 else ""))
        for c in self.conflicts:
            lines.append(f"  conflict: {c['text']}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"WeightMap({len(self.entries)} entries, coverage={self.coverage:.3f}, "
                f"unmatched={len(self.unmatched['candidate'])}/{len(self.unmatched['reference'])}, "
                f"verified={self.verified})")


def _in_order(part: tuple[str, ...], whole: tuple[str, ...]) -> bool:
    """Whether ``part`` is ``whole`` with some members left out, in its order."""
    rest = iter(whole)
    return all(any(p == w for w in rest) for p in part)


def _copied(entries: Iterable[Entry]) -> list[tuple[Entry, Entry | None]]:
    """Each entry with the earlier entry whose values it takes too (None for the first): of
    several taking one reference tensor (tied), the later ones copy the first; a slice of a fused
    tensor is one of its parts, so only an entry taking the same slice copies it."""
    first: dict[Any, Entry] = {}
    out: list[tuple[Entry, Entry | None]] = []
    for e in entries:
        if _folds(e):  # the scale and the shift a batch norm folds into read its tensors alike: no copy of each other
            out.append((e, None))
            continue
        cut = next((s for s in e.steps if s["op"] == "slice"), None)
        part = tuple(e.reference) if cut is None else (e.reference[0], cut["dim"], cut["start"], cut["stop"],
                                                       tuple(map(str, e.steps)))
        earlier = first.get(part) or (next((first[k] for k in e.reference if k in first), None) if cut is None
                                      else None)
        out.append((e, earlier))
        if earlier is None:
            first[part] = e
            first.update({k: e for k in e.reference} if cut is None else {})
    return out


def _folds(e: Entry) -> bool:
    """Whether the entry folds a batch norm's tensors into one (a ``fold_norm`` step)."""
    return any(s["op"] == "fold_norm" for s in e.steps)


def _first_readers(entries: Iterable[Entry]) -> list[Entry]:
    """The entries that give their reference tensors back (see :func:`_copied`)."""
    return [e for e, earlier in _copied(entries) if earlier is None]


def tied_copies(entries: Iterable[Entry]) -> dict[str, list[str]]:
    """Candidate keys taking the same reference values as an earlier entry's (a port keeping the
    head its reference ties to the embedding): the earlier candidate key -> the later ones."""
    out: dict[str, list[str]] = {}
    for e, earlier in _copied(entries):
        if earlier is not None:
            out.setdefault(earlier.candidate, []).append(e.candidate)
    return out


def _check_given_back(entries: list[Entry], reference_state: Mapping[str, Any],
                      candidate_state: Mapping[str, Any]) -> None:
    """ValueError unless the reference tensors read backward give each candidate tensor back
    whose reading loses values: a tied copy not read back, an entry inserting constants, an entry
    gathering rows of a table (places taking one row must hold the same values)."""
    kept = {id(e) for e in _first_readers(entries)}
    lost = []
    for e in entries:
        # rows the candidate's forward never reads may hold anything: dropping them loses nothing used
        if id(e) in kept and not any(s["op"] == "gather" or s["op"] == "insert" and not s.get("unread")
                                     for s in e.steps):
            continue
        given = candidate_state.get(e.candidate)
        if not isinstance(given, torch.Tensor) or any(not isinstance(reference_state.get(k), torch.Tensor)
                                                      for k in e.reference):
            continue  # headers (shapes only), or a tensor the state does not hold
        back = _forward_move(e).apply(reference_state)[e.candidate]
        if back.shape != given.shape or not torch.equal(back.to(given.dtype), given.detach()):
            diff = (float((back.double() - given.detach().double()).abs().max()) if back.shape == given.shape
                    else math.inf)
            why = (f"what {' + '.join(e.reference)} (taken from another candidate tensor) gives it" if id(e) not in kept
                   else "the constant rows the map inserts" if any(s["op"] == "insert" for s in e.steps)
                   else f"what {e.reference[0]} read back gives it (places taking one row of it hold other values)")
            lost.append(f"{e.candidate} differs from {why} by up to {diff:.3e}")
    if lost:
        raise ValueError(f"reading the weight map backward would lose values the reference cannot hold: "
                         f"{'; '.join(lost[:4])}{' ...' if len(lost) > 4 else ''}; make the tied tensors equal, "
                         f"the constant rows constant and the places sharing a gathered row equal first, or pass "
                         f"strict=False to take the first tied tensor's values, drop the constant rows and take "
                         f"each gathered row from the first place holding it")


def _not_held(keys: Mapping[str, tuple[int, ...]], tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys (with the shapes a map gives them) that ``tensors`` lack or hold in another shape."""
    return [k for k, shape in keys.items() if k not in tensors or shape and tuple(tensors[k].shape) != tuple(shape)]


def regrouped_rows(shape: tuple[int, ...], outer: int, inner: int) -> list[Step]:
    """Steps regrouping the rows of a tensor of ``shape`` laid out ``(outer, inner, size)`` as
    ``(inner, outer, size)``: reshape, swap of the two groups, reshape back."""
    rest = list(shape[1:])
    return [{"op": "reshape", "shape": [outer, inner, shape[0] // outer // inner, *rest]},
            {"op": "permute", "dims": [1, 0, *range(2, 3 + len(rest))]}, {"op": "reshape", "shape": list(shape)}]


def regrouped_columns(shape: tuple[int, ...], outer: int, inner: int) -> list[Step]:
    """Steps regrouping the input columns (dim 1) of a tensor of ``shape`` laid out ``(outer,
    inner)`` as ``(inner, outer)``: the layer reading attention heads concatenated ``(head_dim,
    heads)`` where its twin reads ``(heads, head_dim)``, a convolution after a channel shuffle."""
    rest = list(shape[2:])
    return [{"op": "reshape", "shape": [shape[0], outer, inner, *rest]},
            {"op": "permute", "dims": [0, 2, 1, *range(3, 3 + len(rest))]}, {"op": "reshape", "shape": list(shape)}]


def _row_regrouping(e: Entry) -> tuple[int, int, int] | None:
    """``(outer, inner, size)`` when a 2-D entry ends with :func:`regrouped_rows`' steps."""
    tail = e.steps[-3:]
    if len(e.shape) != 2 or len(tail) != 3 or tail[0]["op"] != "reshape" or len(tail[0]["shape"]) != 4:
        return None
    outer, inner, size, _ = tail[0]["shape"]
    return (outer, inner, size) if list(tail) == regrouped_rows(e.shape, outer, inner) else None


@dataclass(frozen=True)
class _FeatureOrder:
    """A module's output features ``(inner, outer, size)`` brought into its twin's ``(outer, inner, size)``."""

    outer: int
    inner: int
    size: int

    @property
    def description(self) -> str:
        return (f"features regrouped ({self.inner}, {self.outer}, {self.size}) -> ({self.outer}, {self.inner}, "
                f"{self.size}), as the weight map orders its rows")

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        grouped = t.reshape(*t.shape[:-1], self.inner, self.outer, self.size)
        return grouped.transpose(-3, -2).reshape(t.shape)


def _shown(keys: list[str], most: int = 6) -> str:
    return ", ".join(keys[:most]) + (f", ... (+{len(keys) - most})" if len(keys) > most else "")


def _forward_move(e: Entry) -> Move:
    if e.steps and e.steps[0]["op"] == "concat":
        return Move(sources=e.reference, targets=(e.candidate,), steps=tuple(e.steps[1:]), dim=e.steps[0]["dim"])
    return Move(sources=e.reference, targets=(e.candidate,), steps=tuple(e.steps))


def _backward_move(e: Entry) -> Move:
    """A candidate tensor back to its reference tensor(s): undo the layout, split a concatenation."""
    dim = e.steps[0]["dim"] if e.steps and e.steps[0]["op"] == "concat" else 0
    layout = [s for s in e.steps if s["op"] != "concat"]
    shapes = e.reference_shapes
    fused = shapes[0] if len(shapes) == 1 else tuple(
        sum(s[dim] for s in shapes) if d == dim else n for d, n in enumerate(shapes[0]))
    sizes = tuple(s[dim] for s in shapes) if len(e.reference) > 1 else None
    return Move(sources=(e.candidate,), targets=e.reference, steps=tuple(invert_steps(layout, fused)), dim=dim,
                sizes=sizes)


def _joining_move(key: str, parts: list[Entry]) -> Move:
    """Candidate tensors that are slices of one reference tensor, joined back into it; rows no slice
    takes hold the slices' ``rest`` (the zero bias of a sibling layer without one), else a ValueError."""
    cuts = []
    for e in parts:
        at = next(i for i, s in enumerate(e.steps) if s["op"] == "slice")
        cuts.append((e.steps[at], list(e.steps[:at]), list(e.steps[at + 1:]), e))
    cuts.sort(key=lambda c: c[0]["start"])
    head, source, dim = cuts[0][1], cuts[0][3].reference_shapes[0], cuts[0][0]["dim"]
    fused = shape_after(head, source)
    covered = [(c[0]["start"], c[0]["stop"]) for c in cuts]
    # rows no slice takes: where the slices say what they hold (the zero bias of a layer without one), inserted
    rest = {c[0].get("rest") for c in cuts}
    gaps = [(a, b) for a, b in zip([0] + [b for _, b in covered], [a for a, _ in covered] + [fused[dim]]) if a != b]
    fill = [{"op": "insert", "dim": dim, "start": a, "size": b - a, "value": value}
            for value in rest for a, b in gaps] if len(rest) == 1 and None not in rest else []
    if any(a > b for a, b in gaps) or gaps and not fill:
        raise ValueError(f"candidate tensors {[c[3].candidate for c in cuts]} cover rows {covered} of {key!r} "
                         f"(size {fused[dim]} along dim {dim}); the rest has no source, so the table cannot be "
                         f"read backward")
    pre = []
    for cut, _, tail, _ in cuts:
        piece = tuple(cut["stop"] - cut["start"] if d == dim else n for d, n in enumerate(fused))
        pre.append(tuple(invert_steps(tail, piece)))
    return Move(sources=tuple(c[3].candidate for c in cuts), targets=(key,), dim=dim,
                steps=(*fill, *invert_steps(head, source)), pre=tuple(pre))


def load_weight_map(source: str | os.PathLike | Mapping[str, Any]) -> WeightMap:
    """A :class:`WeightMap` from a JSON file written by :meth:`WeightMap.save` (or its dict)."""
    where = "weight map"
    if not isinstance(source, Mapping):
        where = f"weight map file {os.fspath(source)!r}"
        try:
            with open(source, encoding="utf-8") as f:
                source = json.load(f)
        except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
            raise ValueError(f"cannot read {where}: {one_line(exc)}") from None
    if not isinstance(source, Mapping) or source.get("format") != FORMAT:
        raise ValueError(f"{where} is not a weight map (expected 'format': {FORMAT!r}); write one with "
                         f"python -m harness map ... --save-map FILE")
    try:
        entries = [_entry(d) for d in _field(source, "entries", list, "a list of entries")]
        unmatched = _field(source, "unmatched", Mapping, "{'candidate': [...], 'reference': [...]}")
        unmatched = {side: _names(unmatched, side) for side in ("candidate", "reference")}
        computed = source.get("computed") or {"candidate": [], "reference": []}
        if not isinstance(computed, Mapping):
            raise ValueError(f"'computed' must be {{'candidate': [...], 'reference': [...]}}, got {computed!r}")
        computed = {side: _names(computed, side) for side in ("candidate", "reference")}
        numel = source.get("candidate_numel", 0)
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise ValueError(f"'candidate_numel' must be a count of elements, got {numel!r}")
        reasons = _field({"reasons": source.get("reasons") or {}}, "reasons", Mapping, "a map of tensor name to why")
        conflicts = _field({"conflicts": source.get("conflicts") or []}, "conflicts", list, "a list")
        notes = _field({"notes": source.get("notes") or []}, "notes", list, "a list of notes")
        twins = _field({"twins": source.get("twins") or {}}, "twins", Mapping, "a map of candidate to reference module")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in twins.items()):
            raise ValueError(f"'twins' must map candidate module names to reference module names, got {dict(twins)!r}")
    except ValueError as exc:
        raise ValueError(f"{where} is malformed: {exc}; regenerate it with python -m harness map ... --save-map FILE "
                         f"or fix that field") from None
    verified, notes = source.get("verified"), list(notes)
    digest = source.get("verified_entries")
    if verified is not None and digest is not None and digest != _digest([e.to_dict() for e in entries]):
        verified = None
        notes.append("the entries were edited after the map was verified: its verification no longer holds")
    return WeightMap(entries=entries, unmatched=unmatched, reasons=dict(reasons), computed=computed,
                     candidate_numel=numel, verified=verified, conflicts=list(conflicts),
                     notes=notes, twins=dict(twins))


def _digest(entries: list[dict[str, Any]]) -> str:
    """A fingerprint of a map's entries as saved (their JSON, keys sorted)."""
    import hashlib

    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:16]


_KINDS = ("parameter", "buffer")


def _field(source: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = source.get(name)
    if not isinstance(value, kind):
        raise ValueError(f"{name!r} must be {what}, got {value!r}")
    return value


def _names(source: Mapping[str, Any], side: str) -> list[str]:
    names = source.get(side, [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{side!r} must be a list of tensor names, got {names!r}")
    return names


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not is_int_list(value, minimum=0):
        raise ValueError(f"{what} must be a list of sizes such as [96, 3, 4, 4], got {value!r}")
    return tuple(value)


def _entry(d: Any) -> Entry:
    """One entry of a saved map, every field checked."""
    if not isinstance(d, Mapping):
        raise ValueError(f"an entry must be an object with 'candidate', 'reference', 'shape'..., got {d!r}")
    candidate = _field(d, "candidate", str, "a candidate tensor name")
    reference = d.get("reference")
    if not isinstance(reference, list) or not reference or not all(isinstance(r, str) for r in reference):
        raise ValueError(f"entry {candidate!r}: 'reference' must be a non-empty list of reference tensor names "
                         f"(one, or several concatenated), got {reference!r}")
    transform = d.get("transform", [])
    if not isinstance(transform, list):
        raise ValueError(f"entry {candidate!r}: 'transform' must be a list of steps, got {transform!r}")
    shapes = d.get("reference_shapes")
    if not isinstance(shapes, list) or len(shapes) != len(reference):
        raise ValueError(f"entry {candidate!r}: 'reference_shapes' must hold one shape per reference tensor "
                         f"({len(reference)}), got {shapes!r}")
    kind = d.get("kind", "parameter")
    if kind not in _KINDS:
        raise ValueError(f"entry {candidate!r}: 'kind' must be one of {', '.join(_KINDS)}, got {kind!r}")
    try:
        steps = tuple(check_step(s) for s in transform)
    except ValueError as exc:
        raise ValueError(f"entry {candidate!r}: {exc}") from None
    return Entry(candidate=candidate, reference=tuple(reference), steps=steps,
                 shape=_shape(d.get("shape"), f"entry {candidate!r}: 'shape'"),
                 reference_shapes=tuple(_shape(s, f"entry {candidate!r}: 'reference_shapes'") for s in shapes),
                 kind=kind)


# -- tensors of a model -----------------------------------------------------------------------------
def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers by state-dict key (each tensor once). The buffers a
    module keeps out of its state dict are read from torch's own record of them: building the
    state dict itself costs a walk with hooks, and a map's verification transfers hundreds of times."""
    modules = list(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    # parameters first, then buffers, each in module order: the order of named_parameters/named_buffers
    for kind in ("_parameters", "_buffers"):
        for prefix, module in modules:
            hidden = module._non_persistent_buffers_set if kind == "_buffers" else ()
            for name, t in getattr(module, kind).items():
                if t is not None and name not in hidden and id(t) not in seen:
                    seen.add(id(t))
                    out[f"{prefix}.{name}" if prefix else name] = t
    return out


def clear_weight_caches(model: nn.Module) -> None:
    """Drop values some models derive from their weights at the first eval forward (attention
    bias caches): after a transfer they would be stale."""
    for module in model.modules():
        for name, value in list(vars(module).items()):
            if "cache" in name.lower() and isinstance(value, dict) and value:
                value.clear()


def owner_of(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def _twin_chains(weights: WeightMap, candidate: nn.Module, reference: nn.Module) -> list[tuple[list[str], list[str]]]:
    def subtree_keys(model: nn.Module, keys: Iterable[str]) -> dict[str, frozenset[str]]:
        """Each module's keys, its descendants' included: each key joins the modules its name runs through."""
        found: dict[str, set[str]] = {name or ROOT: set() for name, _ in model.named_modules()}
        for key in keys:
            parts = key.split(".")
            for depth in range(len(parts)):
                module = found.get(".".join(parts[:depth]) or ROOT)
                if module is not None:
                    module.add(key)
        return {name: frozenset(members) for name, members in found.items()}

    sources, sinks = weights.tensor_links()
    cand_sub = subtree_keys(candidate, sources)
    ref_sub = subtree_keys(reference, sinks)
    by_keys: dict[frozenset[str], list[str]] = {}
    for name, keys in ref_sub.items():
        if keys:
            by_keys.setdefault(keys, []).append(name)  # named_modules order: outer before inner
    groups: dict[frozenset[str], list[str]] = {}
    for name, keys in cand_sub.items():
        if not keys:
            continue
        src = frozenset(r for k in keys for r in sources[k])
        if src not in by_keys:
            continue
        back = frozenset(c for r in src for c in sinks[r])
        if not back <= keys:  # its sources feed tensors elsewhere too: it holds part of a twin's tensors
            continue
        groups.setdefault(src, []).append(name)
    return [(names, by_keys[src]) for src, names in groups.items()]
