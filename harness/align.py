"""Pair candidate records with reference records.

Passes, each only over what the previous ones left:

0. ``weights`` (when a weight map gives twins): modules whose subtrees hold corresponding
   tensors are twins, call by call. Independently written models share no names; they share
   weights. Names cannot then be trusted alone: a later name or rename match is kept only where
   the innermost paired calls enclosing the two calls are each other's twins, and never where
   the map puts a tensor of one module's subtree outside the other's (a port's ``stem`` whose
   last norm its parent holds, against an original ``stem`` holding it: same name, other
   functions). Tensors the map does not place (a norm replaced by ``Identity``) say nothing. Twins may return
   maps of other sizes (a padding or stride set otherwise: the error itself); a fused projection
   returning a multiple of its twin's features (``qkv`` against the attention) is no twin.
1. ``name``: identical qualified name and call index.
2. ``rename``: the candidate name rewritten by the pair's ``(regex, replacement)`` rules, applied
   in order, each to the result of the previous one (a replacement may be a callable, as in
   ``re.sub``). Rules that never fire, rewrite to names the reference does not have, or are
   overridden by an identical name are reported in ``Alignment.notes``.
3. ``place`` (with twins by weights): a call of a module without tensors and with code of its
   own (a port's pooling token mixer) pairs with the reference call standing at its place: inside
   the twin of the call around it, handed what the twin of the call before it returned (see
   :func:`_placed`); standing elsewhere, with the one such reference call inside that twin handed
   the very values it was handed (a sine position encoding made from the padding mask, computed
   before the input projection on one side and after it on the other: :func:`_handed_alike`).
4. ``structure``: between consecutive matched anchors, a sequence alignment (weighted longest
   common subsequence) of the leftover calls on both sides by execution order, where two calls
   may only pair when their primary outputs have the same shape and the innermost anchors around
   them are each other's twins (a wrapper padding before its conv is no guess for the activation
   inside the twin of the next norm), and never where the weight map makes one a whole the other
   is a part of, the calls inside it twinned elsewhere (a port's fusion module gathering three of
   the original's modules is no guess for the last one). It tolerates modules present on one
   side only (an extra ``Identity``, a fused qkv against split q/k/v): those stay unmatched.
   A structural pairing is a guess: it never names the first divergence or the culprit alone.

After the passes, in summary mode, a twin whose candidate call ran ``k`` of the reference's calls
in one batch (both frames through one encoder call) is compared with those calls' statistics joined
along the batch dim (:func:`batched_twins`): a summary keeps no positions to take one frame from.

A pair whose one side is called with several tensors that the other reads as one (a gate given
``u`` and ``v`` against one chunking ``x``) sees that side called with them joined, in their order
along one dim, where that holds near values of the other's input (:func:`_arguments_joined`): its
inputs are then comparable, and it can be re-run on its twin's.

Nothing is dropped silently: whatever no pass paired is returned as unmatched, per side; calls
that returned their input tensor itself (an ``Identity``, a ``Dropout`` in eval mode) are
returned apart as pass-through, since there is nothing to compare in them.
"""

from __future__ import annotations

import copy
import math
import re
from bisect import bisect_left
from functools import lru_cache
from itertools import combinations
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import torch

from harness.checks import type_error
from harness.trace import ROOT, Leaf, Record, TensorSummary, flatten_tensors, map_tensors

__all__ = ["Match", "Aligned", "Alignment", "align", "apply_rename", "batched_twins", "check_rename", "held_apart"]

How = Literal["weights", "name", "rename", "place", "structure"]
Rule = tuple[str, str | Callable[[re.Match], str]]


@dataclass(frozen=True)
class Match:
    candidate: Record
    reference: Record
    how: How


class Aligned:
    """The names of an aligned call, for anything that holds its ``match`` (layer rows, gradient rows)."""

    match: Match

    @property
    def candidate(self) -> str:
        return self.match.candidate.name

    @property
    def reference(self) -> str:
        return self.match.reference.name

    @property
    def call(self) -> int:
        return self.match.candidate.call

    @property
    def key(self) -> str:
        return self.match.candidate.key


@dataclass(frozen=True)
class Alignment:
    matches: list[Match]  # in candidate execution (completion) order
    unmatched_candidate: list[Record]
    unmatched_reference: list[Record]
    passthrough_candidate: list[Record]  # unmatched calls that returned their input unchanged
    passthrough_reference: list[Record]
    notes: tuple[str, ...] = ()  # rename rules that never fired, missed, or were overridden


def check_rename(rules: Sequence[Rule]) -> None:
    """Raise a TypeError/ValueError naming the first malformed ``(regex, replacement)`` rule."""
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise type_error("rename", rules, "a sequence of (regex, replacement) pairs", fix="e.g. [(r'^layers', 'blocks')]")
    for rule in rules:
        if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str)
                and (isinstance(rule[1], str) or callable(rule[1]))):
            raise type_error("a rename rule", rule, "a (regex, replacement) pair with a string or callable replacement")
        try:
            re.compile(rule[0])
            if isinstance(rule[1], str):
                re.sub(rule[0], rule[1], "")
        except re.error as exc:
            raise ValueError(f"rename rule {rule!r} is not a valid regex/replacement: {exc}") from None


def apply_rename(name: str, rules: Sequence[Rule]) -> str:
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


def _rename_notes(candidate: Sequence[Record], reference: Sequence[Record], rules: Sequence[Rule],
                  paired: dict[int, tuple[int, How]]) -> list[str]:
    """What a user should know about their rules: unused ones, missed targets, overridden ones."""
    notes = []
    ref_names = {r.name for r in reference}
    names = list(dict.fromkeys(r.name for r in candidate if r.name != ROOT))
    for pattern, replacement in rules:
        fired = [n for n in names if re.search(pattern, n)]
        if not fired:
            notes.append(f"rename rule {pattern!r} never fires on a candidate module name")
            continue
        missing = [apply_rename(n, rules) for n in fired if apply_rename(n, rules) not in ref_names]
        if missing:
            notes.append(f"rename rule {pattern!r} rewrites to {len(missing)} names the reference does not have, "
                         f"e.g. {missing[0]!r}")
    for ci, (ri, how) in paired.items():
        name = candidate[ci].name
        target = apply_rename(name, rules)
        if how == "name" and target != name and target in ref_names:
            notes.append(f"{name!r} matched the reference module of the same name, although the rename rules "
                         f"map it to {target!r}")
    return notes


def fused_records(
    candidate: Sequence[Record], reference: Sequence[Record],
    fused: Sequence[tuple[str, str, tuple[str, ...], tuple[int, int, int] | None]],
) -> tuple[list[Record], dict[str, str]]:
    """Reference records standing for fused or split twins, and their twin table.

    ``concat``: a candidate ``qkv`` against reference ``q``, ``k``, ``v``: one record whose output
    is the three outputs concatenated along the channel dim (the last dim whose sizes add up).
    ``slice``: a candidate ``q`` against a reference ``qkv``: one record whose output is that slice
    of the fused output. Inputs (and arguments) are those of the first reference call. Full-mode
    traces only.
    """
    by_key = {r.key: r for r in reference}
    calls: dict[str, int] = {}
    for rec in candidate:
        calls[rec.name] = max(calls.get(rec.name, 0), rec.call + 1)
    records, twins = [], {}
    for kind, cand_name, ref_names, cut in fused:
        name = "+".join(ref_names) if kind == "concat" else f"{ref_names[0]}[{cut[0]}:{cut[1]}]"
        for call in range(calls.get(cand_name, 0)):
            parts = [by_key.get(f"{n}#{call}") for n in ref_names]
            if any(p is None or not isinstance(p.primary, torch.Tensor) for p in parts):
                continue
            output = _fuse([p.primary for p in parts], kind, cut)
            if output is None:
                continue
            first = parts[0]
            # the first call's arguments too: the candidate's module can be re-run on them
            records.append(Record(name=name, call=call, start=min(p.start for p in parts),
                                  end=max(p.end for p in parts), inputs=first.inputs, outputs={"0": output},
                                  args=first.args, kwargs=first.kwargs))
        twins[cand_name] = name
    return records, twins


def batched_twins(alignment: Alignment, reference: Sequence[Record]) -> Alignment:
    """``alignment`` with each summary-mode twin whose candidate call ran ``k`` reference calls of
    the module in one batch (a port sending both frames through its encoder at once, the original
    calling it per frame) compared against those ``k`` calls' statistics joined along the batch dim:
    a summary holds no positions to take one frame from. Candidate call ``j`` covers reference calls
    ``j*k`` to ``j*k+k-1``; the calls it covers beyond its twin leave the unmatched reference calls."""
    by_key = {r.key: r for r in reference}
    matches, covered = [], set()
    for m in alignment.matches:
        group = _batch_group(m, by_key)
        joined = None if group is None else _joined(group)
        if joined is None:
            matches.append(m)
            continue
        matches.append(Match(m.candidate, joined, m.how))
        covered.update(id(r) for r in group[1:])
    if not covered:
        return alignment
    return replace(alignment, matches=matches,
                   unmatched_reference=[r for r in alignment.unmatched_reference if id(r) not in covered])


def _batch_group(m: Match, by_key: Mapping[str, Record]) -> list[Record] | None:
    """The reference calls the candidate call ran in one batch, or None."""
    cand, ref = m.candidate.primary, m.reference.primary
    if not isinstance(cand, TensorSummary) or not isinstance(ref, TensorSummary) or not cand.shape or not ref.shape \
            or cand.shape[1:] != ref.shape[1:] or ref.shape[0] == 0 or cand.shape[0] % ref.shape[0] \
            or cand.shape[0] == ref.shape[0] or m.reference.call != m.candidate.call:
        return None
    k = cand.shape[0] // ref.shape[0]
    group = [by_key.get(f"{m.reference.name}#{m.candidate.call * k + i}") for i in range(k)]
    return group if all(r is not None and r.shape == ref.shape for r in group) else None


def _joined(group: list[Record]) -> Record | None:
    """One record for the calls of ``group`` joined along the batch dim (statistics combined
    exactly), or None when one of their leaves has no counterpart in the others."""
    first = group[0]
    outputs, inputs = _joined_leaves([r.outputs for r in group]), _joined_leaves([r.inputs for r in group])
    if outputs is None or inputs is None:
        return None
    return Record(name=first.name, call=first.call, start=first.start, end=first.end, inputs=inputs,
                  outputs=outputs, module=first.module, passthrough=first.passthrough)


def _joined_leaves(leaves: list[dict[str, Leaf]]) -> dict[str, Leaf] | None:
    first = leaves[0]
    if any(d.keys() != first.keys() for d in leaves):
        return None
    out = {}
    for key, leaf in first.items():
        parts = [d[key] for d in leaves]
        if not all(isinstance(p, TensorSummary) and p.shape[1:] == leaf.shape[1:] and p.shape for p in parts):
            return None
        out[key] = _joined_summary(parts)
    return out


def _joined_summary(parts: list[TensorSummary]) -> TensorSummary:
    """The statistics of the tensors of ``parts`` concatenated: means weighted by their finite
    counts, variances pooled around the joint mean (no cancellation), the largest absmax."""
    shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
    counts = [math.prod(p.shape) - p.nonfinite for p in parts]
    kept = [(n, p) for n, p in zip(counts, parts) if n > 0]
    total = sum(n for n, _ in kept)
    nonfinite = sum(p.nonfinite for p in parts)
    if total == 0:
        nan = float("nan")
        return TensorSummary(shape, parts[0].dtype, nan, nan, nan, nonfinite)
    mean = sum(n * p.mean for n, p in kept) / total
    # each part's population variance from its sample std, then pooled with its mean's offset
    spread = sum(n * (p.std ** 2 * (n - 1) / n + (p.mean - mean) ** 2) for n, p in kept)
    std = math.sqrt(max(spread, 0.0) / max(total - 1, 1))
    return TensorSummary(shape, parts[0].dtype, mean, std, max(p.absmax for _, p in kept), nonfinite)


def _fuse(tensors: list[torch.Tensor], kind: str, cut: tuple[int, int, int] | None) -> torch.Tensor | None:
    if kind == "concat":
        first = tensors[0]
        for d in reversed(range(first.ndim)):
            if all(t.ndim == first.ndim and all(t.shape[k] == first.shape[k] for k in range(first.ndim) if k != d)
                   for t in tensors):
                return torch.cat(tensors, dim=d)
        return None
    (fused,) = tensors
    start, stop, size = cut
    dim = next((d for d in reversed(range(fused.ndim)) if fused.shape[d] == size), None)
    return None if dim is None else fused.narrow(dim, start, stop - start)


def choose_twins(
    chains: Sequence[tuple[list[str], list[str]]], candidate: Sequence[Record], reference: Sequence[Record],
    known: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Candidate -> reference twins from chains of modules holding the same tensors.

    A torchvision ``BasicBlock`` holds the same tensors as both transformers' ``ResNetBasicLayer``
    and the ``Sequential`` of convolutions inside it; only one of them computes what the block
    computes. An ``nn.Sequential`` returning an inner member's output leaves the chain first (see
    :func:`_unwrapped`). Within a chain the order is kept (outer with outer) and the pairing whose first
    calls' outputs agree best is chosen. Calls whose outputs are the same values agree equally:
    then those whose inputs agree best (a pooler that receives the tokens and the norm inside it
    that receives their mean, against a norm given the mean), and among calls given the same
    inputs too (a block whose residual was dropped and its inner ``Sequential``) the outer ones, so
    an error in the outer module's own code is blamed on it, not on a child that computed its part
    right. Without recorded tensors: innermost with innermost. ``known``: twins seen agreeing
    before (a verified weight map's), kept for every chain whose shorter side they pair whole (a
    block's inner Sequential, which had no twin, stays without one): an error in this run
    (a residual dropped) can make a block's output nearer its inner branch's than its own twin's.

    Before any of that, the place each call has: a torch layer of the shorter side (an
    ``nn.Conv2d``) twins a layer of its class where the chain has one, and a call of the shorter
    side whose output the next call reads as it is (its caller hands it from one module to the
    next) twins a call of the other side whose output is read so too, where one is. A port's
    position encoding of its own that lost its residual (``peg(x)`` where it should return
    ``x + dwconv(x)``) returns what the reference's inner conv returns, yet it stands where the
    reference's ``PosConv`` stands, and only that pairing blames it; a bare ``nn.Conv2d`` whose
    caller adds (or forgets) the residual twins the inner conv. Modules never called (a
    ``ModuleList`` holding the blocks) are no twins.

    Among calls whose outputs and inputs agree alike, before the outermost: not a module that only
    wraps another of its chain (hands it its inputs as they came, returns its output as it is)
    where that one computes with code of its own, when its partner's own code computes nothing
    after its last call either (see :class:`_Nesting`). A port's DLA ``Tree`` calling its ``Node``
    leaves the twin to the node, which joins the branches; a block that lost its residual around
    a branch of its own stays the twin of an original adding it in its own code.
    """
    first_c = {r.name: r for r in candidate if r.call == 0}
    first_r = {r.name: r for r in reference if r.call == 0}
    handed_c, handed_r = _handed_on(candidate, first_c), _handed_on(reference, first_r)
    nesting_c, nesting_r = _Nesting(candidate, first_c), _Nesting(reference, first_r)
    out: dict[str, str] = {}
    known = known or {}
    for cs, rs in chains:
        cs, rs = _unwrapped(_called(cs, first_c), first_c), _unwrapped(_called(rs, first_r), first_r)
        if len(cs) == 1 and len(rs) == 1:
            out[cs[0]] = rs[0]
            continue
        seen = {c: known[c] for c in cs if known.get(c) in rs}
        if len(set(seen.values())) == len(seen) == min(len(cs), len(rs)):
            out.update(seen)
            continue
        short, long_, flip = (cs, rs, False) if len(cs) <= len(rs) else (rs, cs, True)
        sides = ((first_r, handed_r), (first_c, handed_c)) if flip else ((first_c, handed_c), (first_r, handed_r))
        recorded = all(isinstance(getattr(first_c.get(n), "primary", None), torch.Tensor) for n in cs) and \
            all(isinstance(getattr(first_r.get(n), "primary", None), torch.Tensor) for n in rs)
        nest_short, nest_long = (nesting_r, nesting_c) if flip else (nesting_c, nesting_r)
        best: tuple[int, int, float, float, int, tuple[int, ...]] | None = None
        for picks in combinations(range(len(long_)), len(short)):
            layers, handed, cost, inputs, wrappers = 0, 0, 0.0, 0.0, 0
            for a, b in zip(short, (long_[p] for p in picks)):
                c, r = (b, a) if flip else (a, b)
                other_layer, other_place = _misplaced(a, b, *sides)
                layers, handed = layers + other_layer, handed + other_place
                cost += _distance(first_c.get(c), first_r.get(r))
                inputs += _input_distance(first_c.get(c), first_r.get(r))
                wrappers += nest_long.forwards(b, tuple(long_)) and nest_short.ends_in_call(a)
            # ties: the calls that also receive what their twins receive, then the ones whose own code
            # computes (not a wrapper handing on what a module inside computed), then the outermost
            key = (layers, handed, cost, inputs, wrappers, picks if recorded else tuple(-p for p in picks))
            if best is None or key < best:
                best = key
        picks = best[5] if recorded else tuple(-p for p in best[5])
        for a, p in zip(short, picks):
            c, r = (long_[p], a) if flip else (a, long_[p])
            out[c] = r
    return out


class _Nesting:
    """What the first calls of a model's modules do with the calls nested in them (full mode: the
    trace keeps one copy per tensor, so a value handed on as it is is the same object)."""

    def __init__(self, records: Sequence[Record], first: Mapping[str, Record]) -> None:
        self.first = first
        self.records = sorted(records, key=lambda r: r.start)
        self.starts = [r.start for r in self.records]
        self.forwards = lru_cache(maxsize=None)(self._forwards)
        self.ends_in_call = lru_cache(maxsize=None)(self._ends_in_call)

    def inside(self, call: Record) -> list[Record]:
        """The calls nested in ``call``, in the order they started."""
        return self.records[bisect_left(self.starts, call.start + 1):bisect_left(self.starts, call.end)]

    def _ends_in_call(self, name: str) -> bool:
        """Whether module ``name`` returns as it is what a call nested in it returns (its own code
        computes nothing after its last call)."""
        call = self.first.get(name)
        out = None if call is None else call.primary
        return isinstance(out, torch.Tensor) and any(o.primary is out for o in self.inside(call))

    def _forwards(self, name: str, chain: tuple[str, ...]) -> bool:
        """Whether module ``name`` only wraps another module of ``chain`` nested in it: hands it
        its own inputs as they came and returns its output as it is, where that module computes
        with code of its own (see :meth:`computes`). A ``Tree`` calling its ``Node`` on its input
        and returning the node's result, where the node joins its branches and merges them."""
        call = self.first.get(name)
        out = None if call is None else call.primary
        if not isinstance(out, torch.Tensor):
            return False
        given = {id(v) for v in call.inputs.values()}
        return any(o.primary is out and o.name in chain and o.name != name
                   and all(id(v) in given for v in o.inputs.values()) and self.computes(o) for o in self.inside(call))

    def computes(self, call: Record) -> bool:
        """Whether ``call``'s own code computes a value: its output, or a tensor it hands one of
        its direct calls, is neither what it was given nor what a call inside it returned. An
        ``nn.Sequential`` only chains its members; a node that joins its branches before its
        merge conv, or applies its activation to the merge's output, computes."""
        if call.passthrough:
            return False
        inside = self.inside(call)
        if not any(o.primary is call.primary for o in inside):
            return True
        seen = {id(v) for v in call.inputs.values()}
        open_end = -1  # the end of the direct call the next ones may be nested in
        for o in inside:
            if o.start > open_end:  # a direct call: what it is handed comes from the caller's code
                if any(id(v) not in seen for v in o.inputs.values() if isinstance(v, torch.Tensor)):
                    return True
                open_end = o.end
            seen.update(id(v) for v in o.outputs.values())
        return False


def _misplaced(a: str, b: str, short: tuple[Mapping[str, Record], Callable[[str], bool]],
               long_: tuple[Mapping[str, Record], Callable[[str], bool]]) -> tuple[bool, bool]:
    """How the call of ``b`` (the longer chain's) stands elsewhere than the call of ``a`` (the
    shorter's): ``a`` is a torch layer (an ``nn.Conv2d``) and ``b`` no such layer; ``a``'s output is
    handed on to the next call and ``b``'s is not. Only a value handed on is evidence: one read
    later, or after another call, looks unread."""
    (first_a, handed_a), (first_b, handed_b) = short, long_
    layer = _torch_layer(first_a.get(a))
    return layer is not None and layer is not _torch_layer(first_b.get(b)), handed_a(a) and not handed_b(b)


def _torch_layer(call: Record | None) -> type | None:
    """The ``torch.nn`` layer class a call's module is (or subclasses), for a module without
    children; None for a module of code of its own."""
    module = None if call is None else call.module
    if module is None or next(module.children(), None) is not None:
        return None
    return next((cls for cls in type(module).__mro__ if cls.__module__.startswith("torch.nn.")
                 and cls is not torch.nn.Module), None)


def _called(chain: list[str], first: Mapping[str, Record]) -> list[str]:
    """``chain`` without the modules that were never called (a ``ModuleList``), unless none was."""
    return [name for name in chain if name in first] or chain


def _handed_on(records: Sequence[Record], first: Mapping[str, Record]) -> Callable[[str], bool]:
    """``handed_on(name)``: whether the first call of module ``name`` returns a tensor that the call
    starting next reads as it is (in any layout): its caller hands the value from that module to
    the next one, with no operation between. Pass-through calls on the way (timm's ``drop_path``,
    an eval ``Dropout``) are looked through: ``x + drop_path(attn(x))`` adds before any call reads
    the attention's output. False where nothing tells (statistics only, no next call)."""
    by_start: list[Record] = []  # sorted once, on the first question
    starts: list[int] = []

    @lru_cache(maxsize=None)
    def handed_on(name: str) -> bool:
        call = first.get(name)
        if call is None or not isinstance(call.primary, torch.Tensor):
            return False
        if not by_start:
            by_start.extend(sorted(records, key=lambda r: r.start))
            starts.extend(r.start for r in by_start)
        at = bisect_left(starts, call.end)
        while at < len(by_start) and by_start[at].passthrough:
            at = bisect_left(starts, by_start[at].end)
        following = by_start[at] if at < len(by_start) else None
        return following is not None and any(_same_values(call.primary, t) for t in following.inputs.values())
    return handed_on


def _same_values(a: Leaf, b: Leaf) -> bool:
    """Whether ``b`` holds exactly ``a``'s elements, in ``a``'s layout or another."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.numel() != b.numel() or a.dtype != b.dtype:
        return False
    if a.shape == b.shape:
        return torch.equal(a, b)
    from harness.adapters import find_adapter
    from harness.metrics import Tolerance

    adapter = find_adapter(a, b, tol=Tolerance(0.0, 0.0), remember=False)
    return adapter is not None and torch.equal(adapter.apply(a), b)


def _unwrapped(chain: list[str], first: Mapping[str, Record]) -> list[str]:
    """``chain`` without its ``nn.Sequential`` wrappers that return an inner member's output as
    theirs (timm's one-block ``blocks.0`` around a block that adds its own residual): a Sequential
    computes nothing of its own, so it is no candidate twin for a module with code of its own (a
    torchvision block adding the residual around its inner Sequential)."""
    calls = [first.get(name) for name in chain]
    kept = [name for name, call in zip(chain, calls)
            if not (call is not None and isinstance(call.module, torch.nn.Sequential) and call.primary is not None
                    and any(o is not None and o is not call and call.contains(o) and o.primary is call.primary
                            for o in calls))]
    return kept or chain


def _distance(c: Record | None, r: Record | None) -> float:
    """Relative L2 distance of two calls' primary outputs (layouts adapted); 1e6 when incomparable."""
    if c is None or r is None:
        return 0.0  # nothing to tell them apart: the order decides
    return _leaf_distance(c.primary, r.primary)


def _input_distance(c: Record | None, r: Record | None) -> float:
    """:func:`_distance` of the two calls' first tensor inputs."""
    return 0.0 if c is None or r is None else _leaf_distance(c.first_input, r.first_input)


def _leaf_distance(a: Any, b: Any) -> float:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return 0.0
    a, b = a.detach().double(), b.detach().double()
    from harness.adapters import at_one_position, find_adapter

    if a.shape != b.shape and a.numel() != b.numel():
        a, b, found = at_one_position(a, b)
        if found is None:
            return 1e6
    if a.shape != b.shape:

        adapter = find_adapter(a, b)
        if adapter is None:
            return 1e6
        a = adapter.apply(a)
    scale = float(b.norm())
    return min(float((a - b).norm()) / scale if scale > 0 else float((a - b).norm()), 1e3)


def _part_of(a: Record, b: Record) -> bool:
    """Whether one call returns a multiple of the other's features (all dims equal but the last,
    2x or more of it: a fused ``qkv``'s output against the attention computed from it)."""
    sa, sb = a.shape, b.shape
    if sa is None or sb is None or len(sa) != len(sb) or not sa or sa[:-1] != sb[:-1] or sa[-1] == sb[-1]:
        return False
    small, large = sorted((sa[-1], sb[-1]))
    return small > 0 and large % small == 0


def held_apart(sources: Mapping[str, set[str]], sinks: Mapping[str, set[str]]) -> Callable[..., bool]:
    """``apart(candidate_module, reference_module)``: whether the weight map puts the tensors of a
    module inside one of the two wholly outside the other (the original stem's last norm is the
    port's parent's). ``sources``: candidate key -> the reference keys it is made from; ``sinks``:
    reference key -> the candidate keys made from it (see
    :meth:`harness.weightmap.WeightMap.tensor_links`). A module with only some tensors outside
    (a conv's bias taken from the norm folded into it) is one step done in two modules: no proof.
    ``apart(c, r, whole=True)``: whether one of the two holds every tensor the map links to the
    other, and tensors of other modules too (a port's fusion holding the original's projection
    back and the attention before it): a whole, not the part's twin."""
    def subtrees(keys: Iterable[str]) -> dict[str, frozenset[str]]:
        found: dict[str, set[str]] = {}
        for key in keys:
            parts = key.split(".")
            for depth in range(len(parts)):
                found.setdefault(".".join(parts[:depth]) or ROOT, set()).add(key)
        return {name: frozenset(members) for name, members in found.items()}

    def owners(keys: Iterable[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for key in keys:
            found.setdefault(key.rsplit(".", 1)[0] if "." in key else ROOT, []).append(key)
        return found

    sub_c, sub_r = subtrees(sources), subtrees(sinks)
    empty: frozenset[str] = frozenset()

    def outside(held: frozenset[str], links: Mapping[str, set[str]], other: frozenset[str]) -> bool:
        linked = [k for k in held if links[k]]
        return any(all(not links[k] & other for k in keys) for keys in owners(linked).values())

    def covers(held: frozenset[str], links: Mapping[str, set[str]], other: frozenset[str],
               other_links: Mapping[str, set[str]], own: frozenset[str]) -> bool:
        linked = [k for k in other if other_links[k]]
        return bool(linked) and all(other_links[k] & held for k in linked) and outside(held, links, own)

    @lru_cache(maxsize=None)
    def apart(c: str, r: str, whole: bool = False) -> bool:
        # a record standing for fused or split twins (see fused_records) holds what its parts hold
        parts = [re.sub(r"\[\d+:\d+\]$", "", part) for part in r.split("+")]
        held_c, held_r = sub_c.get(c, empty), frozenset().union(*(sub_r.get(p, empty) for p in parts))
        if whole:  # one holds every tensor the map links to the other, and tensors of others too
            return covers(held_c, sources, held_r, sinks, held_r) or covers(held_r, sinks, held_c, sources, held_c)
        return outside(held_c, sources, held_r) or outside(held_r, sinks, held_c)
    return apart


def _parents(records: Sequence[Record]) -> list[int]:
    """Index of the innermost record enclosing each record (-1 for none)."""
    parent = [-1] * len(records)
    stack: list[int] = []
    for i in sorted(range(len(records)), key=lambda k: records[k].start):
        while stack and not records[stack[-1]].contains(records[i]):
            stack.pop()
        parent[i] = stack[-1] if stack else -1
        stack.append(i)
    return parent


def align(
    candidate: Sequence[Record],
    reference: Sequence[Record],
    rename: Sequence[Rule] = (),
    *,
    structural: bool = True,
    twins: Mapping[str, str] | None = None,
    apart: Callable[..., bool] | None = None,
) -> Alignment:
    """Match candidate records to reference records (see module docstring). ``apart``: whether
    the weight map holds a candidate and a reference module's tensors apart (:func:`held_apart`);
    such modules are paired by no name or rename, nor by shape where one holds the other's tensors
    and more (a structural pairing stays a guess)."""
    check_rename(rename)
    ref_by_key = {r.key: i for i, r in enumerate(reference)}
    paired: dict[int, tuple[int, How]] = {}  # candidate index -> (reference index, how)
    taken: set[int] = set()
    parents_c, parents_r = (_parents(candidate), _parents(reference)) if twins else ([], [])

    def consistent(ci: int, ri: int) -> bool:
        # the innermost paired calls around both must be twins (or both be absent)
        pc, pr = parents_c[ci], parents_r[ri]
        while pc != -1 and pc not in paired:
            pc = parents_c[pc]
        while pr != -1 and pr not in taken:
            pr = parents_r[pr]
        return (pc == -1 and pr == -1) or (pc != -1 and paired[pc][0] == pr)

    def try_pair(ci: int, key: str, how: How) -> bool:
        ri = ref_by_key.get(key)
        if ri is None or ri in taken:
            return False
        if how != "weights" and ((twins and not consistent(ci, ri))
                                 or (apart is not None and apart(candidate[ci].name, reference[ri].name))):
            return False
        paired[ci] = (ri, how)
        taken.add(ri)
        return True

    if twins:
        for ci, rec in enumerate(candidate):
            ri = ref_by_key.get(f"{twins.get(rec.name)}#{rec.call}")
            # A fused projection (qkv) owns the same tensors as the attention around q/k/v on the
            # other side, yet computes only part of it: no twins there. Twins whose maps merely
            # differ in size (a padding or a stride set otherwise) stay twins: that is the error.
            if ri is not None and not _part_of(rec, reference[ri]):
                try_pair(ci, reference[ri].key, "weights")
    # outer calls first, so that the consistency check sees the pairs around a call
    order = sorted(range(len(candidate)), key=lambda k: candidate[k].start) if twins else range(len(candidate))
    for ci in order:
        if ci not in paired:
            try_pair(ci, candidate[ci].key, "name")
    if rename:
        for ci in order:
            rec = candidate[ci]
            if ci not in paired and rec.name != ROOT:
                try_pair(ci, f"{apply_rename(rec.name, rename)}#{rec.call}", "rename")
    notes = _rename_notes(candidate, reference, rename, paired) if rename else []
    if twins:
        _placed(candidate, reference, paired, taken, parents_c)
        _handed_alike(candidate, reference, paired, taken, parents_c)
    if structural:
        _structural(candidate, reference, paired, taken, apart)

    matches = [_arguments_joined(Match(candidate[ci], reference[ri], how)) for ci, (ri, how) in sorted(paired.items())]
    left_c = [r for i, r in enumerate(candidate) if i not in paired]
    left_r = [r for i, r in enumerate(reference) if i not in taken]
    return Alignment(
        matches=matches,
        unmatched_candidate=[r for r in left_c if not r.passthrough],
        unmatched_reference=[r for r in left_r if not r.passthrough],
        passthrough_candidate=[r for r in left_c if r.passthrough],
        passthrough_reference=[r for r in left_r if r.passthrough],
        notes=tuple(notes),
    )


def _placed(candidate: Sequence[Record], reference: Sequence[Record], paired: dict[int, tuple[int, How]],
            taken: set[int], parents_c: list[int]) -> None:
    """Pair (in place, as ``place``) each call without a twin of a module without tensors and with
    code of its own (a port's pooling token mixer) with the reference call standing where it
    stands: inside the twin of the innermost paired call around it, handed (in any layout) what the
    twin of the paired call that ended last before it returned, where it is handed that call's
    output, with as many elements in its output, a module with code of its own too (not a torch
    layer), the outermost (timm's ``token_mixer``, not the ``nn.AvgPool2d`` inside it). Where their
    outputs agree; or where the paired call around both makes an error (its input agrees with its
    twin's, its output does not) and the call returns what a call nested in that reference call
    returns: it stops short inside it (a mixer returning the pooled map without subtracting its
    input), and is blamed. A port doing the wrapper's last step in its caller's code agrees
    around it and keeps its mixer apart."""
    done = sorted(paired, key=lambda k: candidate[k].end)
    ends = [candidate[k].end for k in done]
    by_start = sorted(range(len(reference)), key=lambda j: reference[j].start)
    starts = [reference[j].start for j in by_start]
    for ci, call in enumerate(candidate):
        if ci in paired or call.passthrough or call.first_input is None or not isinstance(call.primary, torch.Tensor) \
                or not _code_without_tensors(call.module):
            continue
        pc = parents_c[ci]
        while pc != -1 and pc not in paired:
            pc = parents_c[pc]
        at = bisect_left(ends, call.start) - 1
        if pc == -1 or at < 0 or not _handed(candidate[done[at]].primary, call.first_input):
            continue
        outer, twin_outer = candidate[pc], reference[paired[pc][0]]
        source = reference[paired[done[at]][0]]
        within = by_start[bisect_left(starts, max(source.end, twin_outer.start) + 1):bisect_left(starts, twin_outer.end)]
        place = next((j for j in within if j not in taken and not (r := reference[j]).passthrough
                      and isinstance(r.primary, torch.Tensor) and r.primary.numel() == call.primary.numel()
                      and _code_of_its_own(r.module) and _handed(source.primary, r.first_input)), None)
        if place is None:
            continue
        twin = reference[place]
        if _agrees(call.primary, twin.primary) or (
                _agrees(outer.first_input, twin_outer.first_input) and not _agrees(outer.primary, twin_outer.primary)
                and any(_agrees(call.primary, reference[j].primary) for j in within if twin.contains(reference[j]))):
            paired[ci] = (place, "place")
            taken.add(place)


def _handed_alike(candidate: Sequence[Record], reference: Sequence[Record], paired: dict[int, tuple[int, How]],
                  taken: set[int], parents_c: list[int]) -> None:
    """Pair (in place, as ``place``) each call left without a twin of a module without tensors and
    with code of its own (a port's sine position encoding, computed from the padding mask) with the
    one reference call of such a module inside the twin of the innermost paired call around it
    that was handed the very values it was handed (each of its tensor inputs, in any layout, among
    that call's), with as many elements in its output, wherever the two stand: independent calls
    may run in another order (the encoding before the input projection, or after it). Its output
    does not decide (a wrong encoding is the error to find), unless it is what another reference
    call returns: it then does that call's part."""
    for ci, call in enumerate(candidate):
        if ci in paired or call.passthrough or not isinstance(call.primary, torch.Tensor) or not call.inputs \
                or not _code_without_tensors(call.module):
            continue
        pc = parents_c[ci]
        while pc != -1 and pc not in paired:
            pc = parents_c[pc]
        scope = reference[paired[pc][0]] if pc != -1 else None
        given = [v for v in call.inputs.values() if isinstance(v, torch.Tensor)]
        alike = [j for j, r in enumerate(reference) if j not in taken and not r.passthrough
                 and (scope is None or scope.contains(r)) and isinstance(r.primary, torch.Tensor)
                 and r.primary.numel() == call.primary.numel() and _code_without_tensors(r.module)
                 and given and all(any(_same_values(v, t) for t in r.inputs.values()) for v in given)]
        if len(alike) != 1:
            continue
        twin = reference[alike[0]]
        # one returning what another reference call returns does that call's work, not the twin's
        # (a mixer that only pools, its caller subtracting the input: the twin's pool returns it)
        if not _agrees(call.primary, twin.primary) and any(
                r is not twin and (scope is None or scope.contains(r)) and _agrees(call.primary, r.primary)
                for r in reference):
            continue
        paired[ci] = (alike[0], "place")
        taken.add(alike[0])


def _handed(output: Leaf | None, given: Leaf | None) -> bool:
    """Whether a call was given ``output`` as it is, or its elements in another layout."""
    return output is not None and (given is output or _same_values(output, given))


def _code_of_its_own(module: torch.nn.Module | None) -> bool:
    """Whether ``module``'s class is written outside torch (not a torch layer or container)."""
    return module is not None and not type(module).__module__.startswith("torch.")


def _code_without_tensors(module: torch.nn.Module | None) -> bool:
    return _code_of_its_own(module) and next(module.parameters(), None) is None


def _agrees(a: Any, b: Any) -> bool:
    """Whether two recorded tensors agree within their dtype's tolerance, in one layout or another."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    from harness.adapters import agreeing_layout
    from harness.metrics import tolerance_for

    return agreeing_layout(a, b, tolerance_for(b.dtype), first=True) is not None


_NEAR = 0.1  # relative L2 distance up to which joined arguments are taken for the twin's one input


def _arguments_joined(match: Match) -> Match:
    """``match`` with the side called with several tensors that its twin reads as one (a gating
    unit given ``(u, v)`` against one given ``x`` and chunking it) seen as called with them joined:
    its record takes the twin's one input, its module cuts that input as its arguments were cut and
    runs on the parts. Its inputs are then compared with the twin's, and it can be re-run on them.
    Only where the arguments, joined in their order along one dim, hold near values of the twin's
    input: values in another order (halves exchanged upstream) are other inputs, not a join."""
    for side, own, twin in (("candidate", match.candidate, match.reference),
                            ("reference", match.reference, match.candidate)):
        joined = _joined_call(own, twin)
        if joined is not None:
            return replace(match, **{side: joined})
    return match


def _joined_call(call: Record, twin: Record) -> Record | None:
    """``call`` taking ``twin``'s one tensor input in place of its several tensor arguments (given
    apart or in a list), or None."""
    given = list(twin.inputs.values())
    parts = list(flatten_tensors(call.args).values())
    if call.module is None or len(given) != 1 or not isinstance(given[0], torch.Tensor) or len(parts) < 2 \
            or len(call.inputs) != len(parts) or len({id(p) for p in parts}) != len(parts):
        return None
    target = given[0]
    dim = _joining_dim(parts, target)
    if dim is None:
        return None
    joined = torch.cat(parts, dim)
    scale = float(target.double().norm())
    if float((joined.double() - target.double()).norm()) > _NEAR * scale:
        return None
    return replace(call, args=(joined,), inputs={"args.0": joined},
                   module=_cutting(call.module, call.args, [p.shape[dim] for p in parts], dim))


def _joining_dim(parts: list[torch.Tensor], target: torch.Tensor) -> int | None:
    """The dim along which ``parts``, joined in their order, take ``target``'s shape (the last first)."""
    if not target.is_floating_point() or any(p.ndim != target.ndim or p.dtype != target.dtype for p in parts):
        return None
    for d in reversed(range(target.ndim)):
        if sum(p.shape[d] for p in parts) == target.shape[d] and all(
                p.shape[k] == target.shape[k] for p in parts for k in range(target.ndim) if k != d):
            return d
    return None


def _cutting(module: torch.nn.Module, args: tuple, sizes: list[int], dim: int) -> torch.nn.Module:
    """``module`` (its parameters and children, shared) called with its tensor arguments joined in
    one: it cuts them apart again (``sizes`` along ``dim``), puts them where ``args`` (the call's
    own) held its tensors, and runs its own forward on them. Its class is a subclass of the
    module's of the same name, so settings and findings read as its."""
    cls = type(module)

    def forward(self: torch.nn.Module, joined: torch.Tensor, **kwargs: Any) -> Any:
        pieces = iter(joined.split(sizes, dim))
        return cls.forward(self, *map_tensors(args, lambda _: next(pieces)), **kwargs)

    forward.__module__ = getattr(cls.forward, "__module__", cls.__module__)  # whose code it runs
    cut = copy.copy(module)
    cut.__class__ = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__})
    return cut


def _structural(
    candidate: Sequence[Record], reference: Sequence[Record], paired: dict, taken: set,
    apart: Callable[..., bool] | None = None,
) -> None:
    """Fill ``paired`` with shape-compatible matches between anchors (in place). Two calls pair
    only where the innermost anchors around them are each other's twins (or neither has one): a
    port's wrapper around its conv (a pad, then the conv child) is no twin of an activation inside
    the original's norm, though both end between the conv and the norm; nor where the weight map
    makes one a whole holding the other's tensors and others too (``apart(..., whole=True)``) and
    the calls inside it have twins outside the other (a port's fusion whose projection, attention
    and projection back twin three of the original's modules is no twin of the last one; an
    ``nn.MultiheadAttention``, no call inside it twinned, stays a guess for an output projection)."""
    confirmed = list(paired.items())

    def contradicted(ci: int, ri: int) -> bool:
        c, r = candidate[ci], reference[ri]
        return any((c.contains(candidate[i]) and not r.contains(reference[j]))
                   or (r.contains(reference[j]) and not c.contains(candidate[i])) for i, (j, _) in confirmed)

    def whole(ci: int, ri: int) -> bool:
        return apart is not None and apart(candidate[ci].name, reference[ri].name, whole=True) and contradicted(ci, ri)

    anchors = _monotone_anchors(sorted((ci, ri) for ci, (ri, _) in paired.items()))
    bounds = [(-1, -1), *anchors, (len(candidate), len(reference))]
    around_c = _anchor_around(candidate, {ci: ri for ci, (ri, _) in paired.items()})
    around_r = _anchor_around(reference, {ri: ri for ri, _ in paired.values()})
    for (c0, r0), (c1, r1) in zip(bounds, bounds[1:]):
        # pass-through calls compute nothing: pairing one would only invent a spurious row
        cs = [i for i in range(c0 + 1, c1) if i not in paired and not candidate[i].passthrough]
        rs = [j for j in range(r0 + 1, r1) if j not in taken and not reference[j].passthrough]
        if not cs or not rs:
            continue
        for ci, ri in _lcs([candidate[i] for i in cs], [reference[j] for j in rs],
                           lambda i, j: around_c[cs[i]] == around_r[rs[j]] and not whole(cs[i], rs[j])):
            paired[cs[ci]] = (rs[ri], "structure")
            taken.add(rs[ri])


def _anchor_around(records: Sequence[Record], anchors: Mapping[int, int]) -> list[int]:
    """For each record, the innermost anchor enclosing it, named by its reference index
    (``anchors``: record index -> that name), or -1 for none."""
    parents = _parents(records)
    around = [-1] * len(records)
    for i in sorted(range(len(records)), key=lambda k: records[k].start):  # parents first
        p = parents[i]
        around[i] = -1 if p == -1 else anchors.get(p, around[p])
    return around


def _monotone_anchors(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Longest subsequence of (candidate, reference) index pairs increasing on both sides."""
    if not pairs:
        return []
    tails: list[int] = []  # reference index ending the best chain of each length
    tail_at: list[int] = []
    parent: list[int] = []
    for k, (_, ri) in enumerate(pairs):
        pos = bisect_left(tails, ri)
        if pos == len(tails):
            tails.append(ri)
            tail_at.append(k)
        else:
            tails[pos] = ri
            tail_at[pos] = k
        parent.append(tail_at[pos - 1] if pos else -1)
    chain, k = [], tail_at[-1]
    while k != -1:
        chain.append(pairs[k])
        k = parent[k]
    return chain[::-1]


def _score(c: Record, r: Record) -> float:
    """0 when the calls cannot pair; otherwise 1, plus 0.5 when their last names share a word."""
    if c.shape is None or c.shape != r.shape:
        return 0.0
    words_c = set(c.name.rsplit(".", 1)[-1].split("_"))
    words_r = set(r.name.rsplit(".", 1)[-1].split("_"))
    return 1.0 + (0.5 if words_c & words_r else 0.0)


def _lcs(cs: list[Record], rs: list[Record], allowed: Callable[[int, int], bool] = lambda i, j: True,
         ) -> list[tuple[int, int]]:
    """Weighted LCS over two call streams, pairing only shape-compatible records that
    ``allowed(i, j)`` lets pair.

    Among equally good alignments the one that pairs the *last* calls of a gap is kept: what one
    side has in excess (a fused qkv before an output projection, an extra stem conv) tends to
    open a gap, while the calls that close it lead into the next anchor on both sides.
    """
    n, m = len(cs), len(rs)
    # best[i][j]: best score of cs[:i] against rs[:j]; backtracking from the end favours late pairs
    best = [[0.0] * (m + 1) for _ in range(n + 1)]
    score = [[(s if (s := _score(c, r)) and allowed(i, j) else 0.0) for j, r in enumerate(rs)]
             for i, c in enumerate(cs)]
    for i in range(1, n + 1):
        row, above = best[i], best[i - 1]
        for j in range(1, m + 1):
            s = score[i - 1][j - 1]
            row[j] = max(above[j], row[j - 1], above[j - 1] + s if s else 0.0)
    out, i, j = [], n, m
    while i > 0 and j > 0:
        s = score[i - 1][j - 1]
        if s and best[i][j] == best[i - 1][j - 1] + s:
            out.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif best[i][j] == best[i - 1][j]:
            i -= 1
        else:
            j -= 1
    return out[::-1]
