"""Measure aligned calls and localize the error: first divergence and culprit.

``first_divergence`` is the earliest aligned call (in completion order, so the innermost of
nested calls comes first) whose output fails tolerance; a culprit without a confirmed twin (see
below) that completed before it is the first divergence itself.

The ``culprit`` is the innermost module that introduces an error itself rather than receiving
one. For each failing call:

- inputs bitwise equal to the reference twin's, or no tensor inputs at all -> made here (a tensor
  the twin was given where the candidate got None, an attention mask its caller never made, makes
  the inputs differ: re-run with the reference's arguments, the module is cleared and its caller
  blamed; so do extra arguments of the shape of a twin's input that hold other values, an
  attention called as ``(y, y, x)`` against one reading ``y``: the caller passed another tensor,
  and the why names the argument and where each side's value comes from);
- inputs differ, and the module may be re-run (its arguments have the reference's structure):
  run the candidate module on the reference's recorded inputs; if that output still fails, the
  error is made here, otherwise it was received. Twin layers of one type whose input axes mean the
  same in every model (a convolution's (B, C, H, W)) take the reference's inputs as they are: an
  input of another shape is another map (transposed upstream), not the same map in another layout,
  unless it is the twin's grown by a border of zeros (a "SAME" pad its caller made): it is first
  re-run on the twin's input padded alike. Twins of other types given inputs of one shape are also
  given them permuted into the layout keeping that shape closest to the candidate's own (an NHWC
  norm against an NCHW one where C == H == W, which values off upstream cannot tell apart). A
  candidate argument standing for a reference input that another argument, holding other values,
  stands for already also keeps its own value (a shifted-window mask as large as the map: the twin
  makes its mask inside).
  Where the structures differ, a tensor the twin was given that no candidate argument stands for
  (an attention mask) also goes into the candidate's None argument of its name, or its only one:
  given it, a Swin attention whose block skipped the shift computes right, and the block is blamed.
  A twin of another type wrapping the one call of the candidate module's type (a depthwise conv
  paired with a wrapper reshaping tokens for its own conv) is first seen through that call: given
  that call's map, the conv agrees, so a map whose height and width its caller swapped is the
  caller's error;
- inputs differ and no re-run is possible: made here if the inputs agree within tolerance,
  received otherwise.

A call that makes an error counts as ``introduced`` unless one of its descendants (a call nested
inside it) already does, in which case it ``contains`` the error. The culprit is the first
``introduced`` call. A failing call inside an ``introduced`` one that was given its twin's inputs
received its error from that call's own code: no other origin is searched for it.

Only confirmed pairings (by weights, name or rename rule) can name the first divergence or the
culprit; a structural pairing is a guess, shown as ``tentative`` when it fails. Code without a
twin is still located: when a confirmed call introduces an error and, inside it, a candidate call
without a twin (or with a failing guess) completed after the last agreeing call and before the
first failing one, the error was made there, and the innermost such call is named instead (its
untwinned children are listed). So an error in an untwinned ``embeddings`` is not blamed on
``<root>``. Such a call is cleared when it did its part right: an untwinned call whose output the
reference also computes (in any layout: a ``Permute`` module against a functional permute; one
without parameters also to a few units in the last place when run on the inputs of the reference
call whose output it holds: a tanh GELU within a float32 tolerance of the exact one is not), as a
call's output or, inside the twin around it, as any op's value (a slice of a fused ``qkv``, a bias
table read by an attention's own code: the twin's ops are run again to see), or a torch lookup (an
``nn.Embedding``) handed indices whose output rows are rows of a reference tensor (the ids,
flipped or not, are its caller's choice), or one nested in a confirmed call that gives its twin's
output when re-run on its twin's inputs (a pooling head's attention fed un-normed state: the head
received the error, and so did everything inside it), or one without parameters that gives what a
reference call without a twin gives when run on that call's inputs (a GELU the port's feed-forward
calls before its depthwise conv, not after: its code is right, its caller's order is not), or a
failing guess that gives its guessed twin's output when re-run on that twin's inputs (a shared
ReLU after a dropped residual add; one that cannot be re-run, in summary mode, when its inputs
already differ from its twin's), or one without parameters that only rearranges its input, turning
a value the reference computes into another (a ``Permute`` back to NCHW after a layer scale its
block left out), or one that, run on a value the reference computes of its input's shape, gives
another (a ``q`` projection split from a fused ``qkv``, handed windows its block did not shift). With every suspect cleared, an operation was left out or moved:
first a cleared call that returns its child's output as it is where the reference reads that
output plus the call's input next (a residual layer that lost its add; a module with a forward of
its own, or where no call around has a twin, a torch container too), with the add named; then a
cleared call with a forward and tensors of its own that hands its input on to its first call and
returns a child's output as it is where the failing call's twin is handed another value (an
embeddings whose position add moved to a later layer: it holds the table, and left the add out); then the own code of an untwinned container
around the failing call: the innermost that does not hand its input on unchanged (an encoder
adding a position table before its ``Sequential`` of layers, not the ``Sequential``), else the
innermost holding tensors of its own (that encoder, when it no longer adds its table: only its own
code reads them), else the innermost with a forward of its own where a reference call around the
failing call's twin received what that container received (a layer calling its norm before the
branch it should follow: given the same value, the reference routes it otherwise); else a failing
guess that returns what its guessed twin receives (a backbone whose final norm is gone, paired by
shape with the original's norm: it stops where the reference goes on); else the innermost call
around both the last agreeing call and the failing one, whose code runs between them, when it has
no twin (a Sequential whose ReLU slot holds an ``Identity``); else the twinned call's own code. A
twinned call failing with nothing inside it failing, that returns as it is what an untwinned call
around the last agreeing one returned, did nothing after it: where one reference call bridges the
two twins' values (the step left out), that untwinned call's code is named (a wrapped model whose
final norm is replaced by ``Identity``), unless the candidate holds the bridge's weights outside
it (a root skipping its own norm is the root's error).
An error received from no call, in a candidate run through a method of its own (``candidate_call``)
whose code no recorded call holds, starts in that code: the model, ``<root>``, is named.
A confirmed call handed an error that still fails on its twin's inputs, while every failing call
inside it only received its error, made it where a call's input is not what the candidate's value
before it gives through the reference's step between their twins (handed on, or through one
reference call run on the candidate's value): the code there is searched as above (a tanh GELU in
every feed-forward of the port's own is named in each block, not the blocks after the first). A
failing guess nothing after which fails inside its caller, returning what its guessed twin
receives, stopped where the reference goes on (a conv with its norm folded in, skipping its ReLU);
a container holding tensors of its own is not said to leave them out where it was handed another
value than the last agreeing one (its caller routed the other half of the channels to it).
``introduced`` lists every independent origin in execution order.

An origin whose output holds what its twin and the reference call reading the twin's output give
together does two steps in one (a batch norm folded into its conv): a note says so, since such
twins cannot agree one by one and their weights are not the suspects.

Twins that differ by a parameter-free operation one side applies inside the module and the
other after it (timm's ``BatchNormAct2d`` against a BatchNorm followed by ``F.relu`` in the
caller's code) are measured before that operation (:func:`drop_trailing_ops`), downstream of an
error too where the candidate's own values show it applying the operation right after the module
(two paths handed each other's half of the input clear their norms, and the caller that split the
input is blamed); a side that never applies it is caught by the call that reads the value, or by
its caller (an op in the caller's own code counts: a ReLU applied in the root before a functional
pool is applied). Twins that both end with an unpaired call of one class (a Dropout left in training
against one in eval mode) apply it in the same place: that call's result is the error.

Twins whose outputs hold the same elements in another layout are compared through an adapter
(:mod:`harness.adapters`), also twins of one shape whose values agree only through a permutation
keeping it (a stage turning the reference's NCHW image into NHWC inside, where C == H == W; a roll
of the tokens only where the input came rolled); values tell the layout within float32's rounding,
which a float64 reference computing its softmax in float32 leaves between right twins. An output
of the twin's shape without one axis is compared with the twin's output at the position along
that axis it agrees with best, whichever side is the smaller (a norm on the pooled class token
against a norm on every token, or a norm on ``[pooled; tokens]`` against a head norming the pooled
row alone); twins whose shapes neither explains fail as a
visible shape mismatch (with agreeing outputs, a row left unchecked: see :func:`harness.compare`'s
verdict). (Prior art: coremltools' comparator blames an op whose output fails while
its direct inputs pass; torch.ao.ns' shadow mode feeds one model's inputs into the other's layers.)
"""

from __future__ import annotations

import inspect
import itertools
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
from torch import nn

from harness.adapters import (AS_IS, Adapter, UserAdapter, agreeing_layout, at_one_position, find_adapter,
                              in_layout_of, kept_permutation, kept_rolled_layout, layouts, rounding_tolerance,
                              then_layout, user_adapter)
from harness.align import Aligned, Alignment, Match
from harness.metrics import Metrics, Tolerance, measure, measure_summaries, tolerance_for
from harness.trace import ROOT, Leaf, Record, TensorSummary, flatten_tensors, map_tensors, outputs_read_after

__all__ = ["Row", "Status", "Localization", "measure_match", "extend_twins", "drop_trailing_ops", "classify", "localize",
           "localize_all"]

Status = Literal["ok", "introduced", "contains", "propagated", "tentative"]


@dataclass
class Row(Aligned):
    """One aligned module call and its error."""

    match: Match
    metrics: Metrics
    tolerance: Tolerance
    passed: bool
    leaf: str  # the output leaf the metrics describe (the worst one)
    status: Status = "ok"
    reran: bool = False
    adapter: str | None = None  # layout adapter applied to the candidate's output, if any
    reference_shape: tuple[int, ...] | None = None  # the twin's output shape, when it differs
    # noise floor (harness.noise): its judgement, the absolute-tolerance verdict it replaced, and
    # the judge of re-runs (outputs -> still fails?)
    noise: Any = None
    passed_tolerance: bool | None = None
    rerun_judge: Any = field(default=None, repr=False)
    guess_received: bool | None = field(default=None, repr=False)  # a failing guess re-run: it received the error
    guess_reran: bool = field(default=False, repr=False)  # ... or it still failed, given its guessed twin's inputs
    inner_values: list | None = field(default=None, repr=False)  # the twin's values op by op (_inner_values)
    # the parameter-free call ending the candidate's module that its twin leaves to its caller
    # (drop_trailing_ops): a re-run is measured at that call's input, as the row is
    trailing: nn.Module | None = field(default=None, repr=False)


def _leaf_pairs(cand: dict[str, Leaf], ref: dict[str, Leaf]) -> list[tuple[str, Leaf, Leaf]]:
    """Same keys: leaf by leaf. Otherwise: in order, as far as both sides go, by equal shape; with
    no equal shapes at all, the primary (first) leaves, whose layouts may differ."""
    if cand.keys() == ref.keys():
        return [(k, cand[k], ref[k]) for k in cand]
    pairs, rest = [], list(ref.items())
    for k, a in cand.items():
        for idx, (rk, b) in enumerate(rest):
            if tuple(a.shape) == tuple(b.shape):
                pairs.append((k if k == rk else f"{k}~{rk}", a, b))
                del rest[idx]
                break
    if not pairs and cand and ref:
        (k, a), (rk, b) = next(iter(cand.items())), next(iter(ref.items()))
        pairs.append((k if k == rk else f"{k}~{rk}", a, b))
    return pairs


def _numel(leaf: Leaf) -> int:
    n = 1
    for d in leaf.shape:
        n *= d
    return n


def _adapt(a: Leaf, b: Leaf, forced: Adapter | None, tol: Tolerance,
           measured: bool = False) -> tuple[Leaf, Leaf, str | None]:
    """``(a, b)`` brought to one layout: ``a`` in ``b``'s when their shapes differ and an adapter
    explains it (``tol``: see :func:`harness.adapters.find_adapter`; ``measured``: every layout
    that fits is measured, however far apart the values stand), or through ``forced`` whatever
    their shapes (features in another order keep the shape; statistics do not see the order), then
    the layout that brings its result into ``b``'s shape (:func:`harness.adapters.then_layout`); or,
    when one side computes one position of the other's output, the other side at that position
    (:func:`_position`)."""
    if tuple(a.shape) == tuple(b.shape) and (forced is None or not isinstance(a, torch.Tensor)):
        return a, b, None
    if isinstance(a, TensorSummary) or isinstance(b, TensorSummary):
        if _numel(a) != _numel(b):
            return a, b, None
        s = _summary(a)
        return TensorSummary(tuple(b.shape), s.dtype, s.mean, s.std, s.absmax, s.nonfinite), b, "same elements (statistics)"
    if forced is None and a.numel() != b.numel() and min(a.numel(), b.numel()) > 0:
        return _position(a, b, tol)
    # a forced adapter leaving another shape is followed by the layout search (composed)
    adapter = then_layout(forced, a, b, tol) if forced is not None \
        else find_adapter(a, b, tol=None if measured else tol)
    if adapter is None:
        return a, b, None
    return adapter.apply(a), b, adapter.description


def _position(a: torch.Tensor, b: torch.Tensor, tol: Tolerance) -> tuple[Leaf, Leaf, str | None]:
    """``(a, b)`` with the larger one taken at the one position along one axis that the smaller
    one holds (:func:`harness.adapters.one_position`): the candidate's norm on the pooled class
    token against the reference's on every token, or the reverse (a port running its final norm on
    ``[pooled; tokens]`` and keeping the pooled row, against a head norming the pooled row alone).
    ``(a, b, None)`` when no axis fits."""
    a_at, b_at, found = at_one_position(a, b, tol)
    if found is None:
        return a, b, None
    if a.numel() < b.numel():
        return a_at, b_at, f"the reference's {found[1]} along dim {found[0]} (the candidate computes that position only)"
    return a_at, b_at, f"the candidate's {found[1]} along dim {found[0]} (the reference computes that position only)"


def _worst(pairs: list[tuple[str, Leaf, Leaf]], tol: Tolerance,
           forced: Adapter | None = None) -> tuple[str, Metrics, bool]:
    """Metrics of the leaf furthest beyond its bound, and whether every leaf passes."""
    return _worst_adapted(pairs, tol, forced)[:3]


def _worst_adapted(pairs: list[tuple[str, Leaf, Leaf]], tol: Tolerance, forced: Adapter | None = None,
                   keep_shape: bool = False, rolls: bool = True,
                   measured: bool = False) -> tuple[str, Metrics, bool, str | None, tuple | None]:
    """As :func:`_worst`, plus the adapter used on the worst leaf and the reference shape when it
    differs. ``keep_shape``: a leaf of the reference's shape that fails may pass through a
    permutation keeping its shape, or, with ``rolls``, a roll of its tokens (see :func:`measure_match`);
    ``measured``: see :func:`_adapt`."""
    worst: tuple[float, str, Metrics, str | None, tuple | None] | None = None
    passed = True
    for key, a0, b in pairs:
        a, b, adapter = _adapt(a0, b, forced, tol, measured)
        ref_shape = tuple(b.shape) if tuple(a0.shape) != tuple(b.shape) else None
        if isinstance(a, TensorSummary) or isinstance(b, TensorSummary):
            m = measure_summaries(_summary(a), _summary(b))
        elif not (a.is_floating_point() or a.is_complex()) and not (b.is_floating_point() or b.is_complex()):
            m = measure(a.double(), b.double())
        else:
            m = measure(a, b)
        ok = m.passes(tol)
        if not ok and keep_shape and adapter is None and isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            # values decide, the cheap way first (a leaf whose extremes differ agrees in no
            # layout), within the reference's own rounding (a float64 reference may compute its
            # softmax in float32): the verdict is then the tolerance's, in that layout
            wide = rounding_tolerance(tol)
            kept = None if not a.is_floating_point() else agreeing_layout(a, b, wide, same_shape=True) if rolls \
                else kept_permutation(a, b, wide)
            if kept is not None and kept is not AS_IS:
                m, adapter = measure(kept.apply(a), b), kept.description
                ok = m.passes(tol)
        passed &= ok
        ratio = float("inf") if not ok and (m.shape_mismatch or m.nonfinite_mismatch) else (
            m.max_abs / max(tol.bound(m.ref_absmax), 1e-300))
        if worst is None or ratio > worst[0]:
            worst = (ratio, key, m, adapter, ref_shape)
    if worst is None:  # no comparable tensor leaves: structure differs entirely
        nan = float("nan")
        return "", Metrics(nan, nan, nan, nan, nan, shape_mismatch=True), False, None, None
    return worst[1], worst[2], passed, worst[3], worst[4]


def _summary(leaf: Leaf) -> TensorSummary:
    return leaf if isinstance(leaf, TensorSummary) else TensorSummary.of(leaf)


def measure_match(match: Match, tol: Tolerance, adapters: Sequence[UserAdapter] = ()) -> Row:
    forced = user_adapter(match.candidate.name, adapters)
    pairs = _leaf_pairs(match.candidate.outputs, match.reference.outputs)
    # one shape, another layout (NHWC against NCHW when C == H == W): a module may turn the
    # reference's layout into its own inside (a stage given an NCHW image that returns NHWC tokens)
    leaf, metrics, passed, adapter, ref_shape = _worst_adapted(pairs, tol, forced, keep_shape=forced is None,
                                                               rolls=False)
    if not passed and forced is None and adapter is None and _inputs_in_another_layout(match, tol):
        # a roll of the tokens only where the input came rolled: a forgotten roll back of shifted
        # windows is an error, not a layout (a worst leaf in a layout already is measured alike)
        leaf, metrics, passed, adapter, ref_shape = _worst_adapted(pairs, tol, keep_shape=True)
    kept = kept_rolled_layout(match, tol) if passed and adapter is not None and forced is None else None
    if kept is not None and kept.description != adapter:
        # twins that keep their input's layout return their outputs in it too: an attention that
        # forgets to roll its shifted windows back agrees only through another roll
        leaf, metrics, passed, adapter, ref_shape = _worst_adapted(pairs, tol, kept)
    return Row(match=match, metrics=metrics, tolerance=tol, passed=passed, leaf=leaf, adapter=adapter,
               reference_shape=ref_shape)


def remeasured_by_values(row: Row) -> None:
    """Measure ``row`` again, each leaf of another shape in the layout that gives the smallest
    error of all that fit: for a row whose error is known to be within its reference's own rounding
    (:mod:`harness.noise`), whatever that rounding left of the tensors' extremes. Its verdict stays;
    the row is left as it was unless the layouts measured bring its tensors closer."""
    pairs = _leaf_pairs(row.match.candidate.outputs, row.match.reference.outputs)
    leaf, metrics, _, adapter, ref_shape = _worst_adapted(pairs, row.tolerance, measured=True)
    if metrics.rel_l2 < row.metrics.rel_l2:
        row.leaf, row.metrics, row.adapter, row.reference_shape = leaf, metrics, adapter, ref_shape


def _inputs_in_another_layout(match: Match, tol: Tolerance) -> bool:
    """Whether the twins' tensor inputs agree only through a layout adapter (another shape, or a
    permutation keeping the shape), not as they are."""
    pairs = _leaf_pairs(match.candidate.inputs, match.reference.inputs)
    tensors = [(a, b) for _, a, b in pairs if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
               and a.numel() == b.numel() and a.is_floating_point()]
    for a, b in tensors:
        found = agreeing_layout(a, b, rounding_tolerance(tol), same_shape=True)
        if found is not None and found is not AS_IS:
            return True
    return False


def extend_twins(rows: list[Row], alignment: Alignment, measure_row: Callable[[Match], Row]) -> Alignment:
    """Twins by weights that differ by a trailing operation without weights: timm's
    ``BatchNormAct2d`` applies its activation inside, torchvision's BatchNorm is followed by its own
    ``SiLU`` module. When such a row fails, the unpaired calls that follow one side's module (up to
    the next paired call) are tried against the other side's output; one that agrees joins the
    row's module as one call (its name and inputs, the trailing call's outputs; re-runs run
    both). Downstream of a real error no
    trial agrees, so a failing row is extended all the same when an agreeing row extended the
    same kinds of modules so (the same pattern), when the twin runs a submodule of the trailing
    call's type inside (its ``act``), or when the trial's error is less than half the row's (the
    activation's effect gone). Rows are replaced in place."""
    paired_c = sorted(r.match.candidate.start for r in rows)
    paired_r = sorted(r.match.reference.start for r in rows)
    pools = {"candidate": list(alignment.unmatched_candidate), "reference": list(alignment.unmatched_reference)}
    patterns: set[tuple] = set()
    later: list[tuple[int, list[tuple[str, Record, Row, tuple]]]] = []
    for at, row in enumerate(rows):
        if row.passed or row.match.how != "weights":
            continue
        trials = []
        for side, call in ((side, call) for side in ("candidate", "reference") for call in
                           _following(row, side, pools[side], paired_c if side == "candidate" else paired_r)):
            match = Match(call, row.match.reference, "weights") if side == "candidate" else \
                Match(row.match.candidate, call, "weights")
            trials.append((side, call, measure_row(match), _pattern(row.match, side, call)))
            if trials[-1][2].passed:
                break
        if trials and trials[-1][2].passed:
            _extend(rows, at, pools, *trials[-1][:3])
            patterns.add(trials[-1][3])
        elif trials:
            later.append((at, trials))
    for at, trials in later:  # failing downstream of an error: the same pattern, or a far closer pairing
        row = rows[at]
        free = [t for t in trials if t[1] in pools[t[0]]]
        chosen = next((t for t in free if t[3] in patterns or _applied_inside(row.match, t[0], t[1])), None) or min(
            (t for t in free if t[2].metrics.rel_l2 < 0.5 * row.metrics.rel_l2), key=lambda t: t[2].metrics.rel_l2,
            default=None)
        if chosen is not None:
            _extend(rows, at, pools, *chosen[:3])
    return replace(alignment, unmatched_candidate=sorted(pools["candidate"], key=lambda r: r.end),
                   unmatched_reference=sorted(pools["reference"], key=lambda r: r.end))


def drop_trailing_ops(rows: list[Row], alignment: Alignment, measure_row: Callable[[Match], Row]) -> None:
    """Twins that differ by an operation one side applies inside the module and the other after
    it, in its caller's code: timm's ``BatchNormAct2d`` ends with its ``act`` child, torchvision's
    Inception applies ``F.relu`` after its BatchNorm. When a confirmed row fails and one side's call
    ends with an unpaired call without parameters whose output is the call's output (directly or
    through nested calls ending with it), the other side's output is measured against that trailing
    call's input; if they agree, or differ by less than half the row's error (the operation's
    effect gone; downstream of an error nothing agrees), or if an agreeing row of the same kinds of
    modules was (the same pattern), the row is replaced by that measurement,
    and its re-runs compare against that input too; not when the twin ends with an unpaired call of
    the same class (a Dropout left in training against one in eval mode: the same place on both
    sides, the operation's result is the error). If the other side never applies the operation,
    the next call that reads the value (or the caller) makes the error instead, unless the candidate
    module itself ends with a call of its own where the operation belongs (a norm-activation module
    whose activation is an ``Identity``) and, given its twin's inputs, no call after it receives the
    operation's result: then the row stays as measured, the module's own error; so too where the
    candidate's trailing call makes what, given the same inputs, no reference call after the twin
    receives and no call around it returns (a GELU appended to a feed-forward: an extra operation).
    Downstream of an error a row whose twin ends with the operation is replaced all the same when
    the candidate applies it right after its module (:func:`_applied_after`).
    The model's own call is never shortened: its outputs are the outputs. Rows are replaced in place."""
    unpaired = {id(r) for r in (*alignment.unmatched_candidate, *alignment.unmatched_reference,
                                *alignment.passthrough_candidate, *alignment.passthrough_reference)}
    ends = {side: {r.end: r for r in (*(getattr(m, side) for m in alignment.matches),
                                      *getattr(alignment, f"unmatched_{side}"), *getattr(alignment, f"passthrough_{side}"))}
            for side in ("candidate", "reference")}
    patterns: set[tuple] = set()  # the kinds of twins whose trailing call was dropped and then agreed
    starts = sorted((*(m.candidate for m in alignment.matches), *alignment.unmatched_candidate,
                     *alignment.passthrough_candidate), key=lambda r: r.start)
    ref_starts = sorted((*(m.reference for m in alignment.matches), *alignment.unmatched_reference,
                         *alignment.passthrough_reference), key=lambda r: r.start)
    _CALLER_VALUES.clear()
    for at, row in enumerate(rows):
        if row.passed or row.match.how == "structure" or ROOT in (row.candidate, row.reference):
            continue
        for side in ("reference", "candidate"):
            own = getattr(row.match, side)
            trailing = _trailing_call(own, ends[side], unpaired)
            if trailing is None or _ends_alike(getattr(row.match, _OTHER[side]), trailing, ends[_OTHER[side]], unpaired):
                continue
            if side == "reference" and _never_applied(row, trailing, starts) and (
                    _trailing_call(row.match.candidate, ends["candidate"], unpaired) is not None
                    or _own_forward(row.match.candidate.module)
                    and not _seen(trailing.primary, row.match.candidate, starts, row.tolerance)):
                # the candidate module ends with a call of its own where the operation belongs (an
                # activation set to Identity), or it has code of its own and, given its twin's inputs,
                # neither the next calls nor a call around it ever see the operation's result (a
                # block that lost the ReLU after its residual add): the error is the module's own (a
                # torch layer's never is: its caller's code left the operation out)
                continue
            if side == "candidate" and _reference_never_applies(row, trailing, ref_starts):
                # an operation the reference applies neither inside the twin nor after it (a GELU
                # appended to a feed-forward): the candidate's extra operation is its error
                continue
            trial = measure_row(replace(row.match, **{side: replace(own, outputs=_as_outputs(trailing.inputs))}))
            pattern = _pattern(row.match, side, trailing)
            if trial.passed:
                patterns.add(pattern)
            if trial.passed or pattern in patterns or trial.metrics.rel_l2 < 0.5 * row.metrics.rel_l2 \
                    or (side == "reference" and _applied_after(row, trailing, starts)):
                where = "the reference" if side == "reference" else "the candidate"
                rows[at] = replace(trial, adapter=f"before {trailing.name}, which {where} applies inside this call",
                                   trailing=trailing.module if side == "candidate" else None)
                break
    _CALLER_VALUES.clear()


_OTHER = {"candidate": "reference", "reference": "candidate"}


def _ends_alike(twin: Record, trailing: Record, by_end: dict[int, Record], unpaired: set[int]) -> bool:
    """Whether ``twin`` ends with an unpaired call of ``trailing``'s module class too: both sides
    apply the operation inside the call (one as a no-op, a Dropout in eval mode against one left
    in training), so it is not applied elsewhere, and what it computes is the error."""
    other = _trailing_call(twin, by_end, unpaired)
    return other is not None and type(other.module) is type(trailing.module)


_READERS = 3  # candidate calls after a module searched for the value its twin ends with


def _never_applied(row: Row, trailing: Record, calls: list[Record]) -> bool:
    """Whether the candidate, given its twin's inputs, never computes what the reference's trailing
    call makes (a ReLU inside timm's ``GroupNormAct`` that the port's norm-activation module lost): no call reading
    the candidate's value after the row's module receives it. Downstream of an error nothing would,
    so rows with other inputs are not judged."""
    cand = row.match.candidate
    made = trailing.primary
    if not isinstance(made, torch.Tensor) or _inputs_state(cand, row.match.reference, row.tolerance) == "differ":
        return False
    after = [c for c in calls if c.start > cand.end][:_READERS]
    return not any(_holds_any(made, [c.first_input], row.tolerance) for c in after)


def _seen(value: Any, call: Record, calls: list[Record], tol: Tolerance) -> bool:
    """Whether ``value`` is what one of the next calls after ``call`` reads, or what a call around
    it returns (an operation its caller applies, functionally or by a module of its own), or, failing
    both, a value an op of the caller's own code computes or reads (torchvision's DenseNet applies
    its final ReLU in the root and hands it to a functional pool: no module ever sees it)."""
    after = [c for c in calls if c.start > call.end][:_READERS]
    return any(_holds_any(value, [c.first_input], tol) for c in after) \
        or any(_holds_any(value, [c.primary], tol) for c in calls if c is not call and c.contains(call)) \
        or _holds_any(value, _caller_values(call, calls), tol)


def _caller_values(call: Record, calls: list[Record]) -> list[torch.Tensor]:
    """Every value the innermost call around ``call`` with a forward of its own computes op by op
    (its code is where an operation left to the caller runs; a torch container only chains its
    children), kept on that record; [] when there is none or it cannot run again."""
    from harness.diagnose import record_values  # diagnose re-runs modules; localize only needs this

    around = [c for c in calls if c is not call and c.contains(call) and _own_forward(c.module)]
    caller = min(around, key=lambda c: c.end - c.start, default=None)
    if caller is None or type(caller.module).__name__ == "RecordedModule" \
            or sum(p.numel() for p in caller.module.parameters()) > INNER_ELEMENTS:
        return []
    if (values := _CALLER_VALUES.get(id(caller))) is None or values[0] is not caller:
        values = _CALLER_VALUES[id(caller)] = (caller, record_values(caller.module, caller.args, caller.kwargs))
    return values[1]


# the op values of callers recorded by _caller_values, by id of their record (the record is kept
# with them, so an id reused by a later trace is not mistaken for it); cleared per drop_trailing_ops
_CALLER_VALUES: dict[int, tuple[Record, list[torch.Tensor]]] = {}


def _applied_after(row: Row, trailing: Record, calls: list[Record]) -> bool:
    """Whether the candidate applies the reference's ``trailing`` operation itself, right after its
    module: run on the candidate module's output, it gives what a candidate call around the module
    returns or what one of the next calls reads (a ReLU in the caller's code after a BatchNorm,
    where timm's ``BatchNormAct2d`` applies it inside). The candidate's own values tell, so this
    holds downstream of an error too, where no value matches the reference's."""
    cand, out = row.match.candidate, row.match.candidate.primary
    if trailing.module is None or not isinstance(out, torch.Tensor) or not out.is_floating_point():
        return False
    try:
        with torch.no_grad():
            made = trailing.module(out.clone())  # a copy: an in-place activation must not write into the trace
    except Exception:  # a module that does not take the candidate's output as it is
        return False
    if not isinstance(made, torch.Tensor) or made.shape != out.shape or _bitwise(made, out):
        return False  # an operation leaving these values alone shows nothing
    return _seen(made, cand, calls, row.tolerance)


def _reference_never_applies(row: Row, trailing: Record, calls: list[Record]) -> bool:
    """Whether the reference, given the same inputs, never computes what the candidate's trailing
    call makes: neither a call around the twin returns it nor a call after the twin receives it
    (an activation its caller applies, functionally or by a module of its own, is received by the
    next layer or returned by the caller). Rows with other inputs are not judged."""
    ref = row.match.reference
    made = trailing.primary
    if not isinstance(made, torch.Tensor) or _inputs_state(row.match.candidate, ref, row.tolerance) == "differ":
        return False
    return not _seen(made, ref, calls, row.tolerance)


def _trailing_call(own: Record, by_end: dict[int, Record], unpaired: set[int]) -> Record | None:
    """The unpaired, parameter-free call that ends ``own``'s computation: the last call nested in
    it (or in the nested call ending it, and so on) whose output is ``own``'s output."""
    outer = own
    while (inner := by_end.get(outer.end - 1)) is not None and inner.start > outer.start:
        if not _same_leaves(inner.outputs, own.outputs):
            return None
        if id(inner) in unpaired and inner.module is not None and not any(True for _ in inner.module.parameters()):
            return inner
        outer = inner
    return None


def _same_leaves(a: dict[str, Leaf], b: dict[str, Leaf]) -> bool:
    return len(a) == len(b) and all(_bitwise(x, y) for x, y in zip(a.values(), b.values()))


def _bitwise(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are tensors of one shape holding the same values (``a`` read at ``b``'s dtype)."""
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
        and torch.equal(a.to(b.dtype), b)


def _as_outputs(inputs: dict[str, Leaf]) -> dict[str, Leaf]:
    """A call's tensor inputs in the form of outputs (what the trailing call received)."""
    return {k: v for k, v in inputs.items() if isinstance(v, (torch.Tensor, TensorSummary))}


def _following(row: Row, side: str, pool: list[Record], starts: list[int]) -> list[Record]:
    """Up to three unpaired calls of ``side`` right after the row's module, before the next paired call."""
    own = row.match.candidate if side == "candidate" else row.match.reference
    stop = next((s for s in starts if s > own.end), None)
    return [u for u in pool if u.start > own.end and (stop is None or u.end < stop)][:3]


def _applied_inside(match: Match, side: str, call: Record) -> bool:
    """Whether the twin of ``side``'s module runs a submodule of the trailing ``call``'s type inside
    (a ``BatchNormAct2d`` its ``act``, a ``ReLU`` as the torchvision BatchNorm's next call): the
    structure says the two are one call, whatever the values downstream of an error."""
    other = match.reference if side == "candidate" else match.candidate
    if call.module is None or other.module is None or any(True for _ in call.module.parameters()):
        return False
    return any(type(m) is type(call.module) for m in other.module.modules() if m is not other.module)


def _pattern(match: Match, side: str, call: Record) -> tuple:
    """The kinds of modules an extension pairs: (side, candidate type, reference type, trailing call's type)."""
    kind = (lambda r: type(r.module).__name__ if r.module is not None else r.name.rsplit(".", 1)[-1])
    return side, kind(match.candidate), kind(match.reference), kind(call)


class _Chain(nn.Module):
    """A module and the call that follows it, run as one (a BatchNorm and its activation): what a
    culprit re-run or a diagnosis of an extended twin runs."""

    def __init__(self, head: nn.Module, tail: nn.Module, names: tuple[str, str], tail_key: str) -> None:
        super().__init__()
        self.head, self.tail = head, tail
        self.training = head.training  # the flag alone: train() would set the models' own modules
        self.scope_names = {"head": names[0], "tail": names[1]}  # how findings name the two parts
        self.tail_key = tail_key  # the call whose output is the pair's: a float64 run is read there
        self.shown_as = type(head).__name__  # the class findings name for the pair's own settings

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.tail(self.head(*args, **kwargs))


def _extend(rows: list[Row], at: int, pools: dict[str, list[Record]], side: str, call: Record, trial: Row) -> None:
    """Make the row's ``side`` the module and the call after it as one: the module's name, inputs
    and arguments, the call's outputs (so re-runs and the diagnosis run both); ``trial`` measured
    those outputs already."""
    match = rows[at].match
    own = match.candidate if side == "candidate" else match.reference
    chain = None if own.module is None or call.module is None else _Chain(own.module, call.module,
                                                                          (own.name, call.name), call.key)
    joined = replace(own, end=call.end, outputs=call.outputs, module=chain)
    rows[at] = replace(trial, match=replace(match, **{side: joined}))
    pools[side].remove(call)


def _inputs_state(cand: Record, ref: Record, tol: Tolerance) -> Literal["equal", "close", "differ"]:
    if not cand.inputs:
        # No tensor flows into the candidate call (e.g. a RoPE table built from grid integers):
        # no error can have reached it through its inputs, so a wrong output is made here.
        return "equal"
    pairs = _leaf_pairs(cand.inputs, ref.inputs)
    if not pairs or _left_out(cand, ref):  # a tensor its twin was given is missing: not the same inputs
        return "differ"
    pairs += _stand_ins(cand.inputs, ref.inputs, pairs)
    pairs = [(k, a, b) for k, a, b in pairs if not _inverse_masks(a, b)] or pairs
    if all(_bitwise(a, b) for _, a, b in pairs):
        return "equal"
    if all(isinstance(a, TensorSummary) and a == b for _, a, b in pairs):
        return "equal"  # summary mode: identical statistics are the closest to equal one can tell
    return "close" if _worst(pairs, tol)[2] else "differ"


def _inverse_masks(a: Leaf, b: Leaf) -> bool:
    """Whether two boolean masks known by their statistics alone (summary mode) may be one another's
    inverse: a mask of the positions kept against one of the positions masked (``key_padding_mask``)
    is a convention, not another input. Their values are not kept, so the statistics are all that
    tells; a mask of the wrong polarity shows in the output of the module reading it."""
    return isinstance(a, TensorSummary) and isinstance(b, TensorSummary) and a.dtype == b.dtype == "bool" \
        and tuple(a.shape) == tuple(b.shape) and math.isclose(a.mean, 1.0 - b.mean, abs_tol=1e-12)


def _stand_ins(cand: dict[str, Leaf], ref: dict[str, Leaf], pairs: list[tuple[str, Leaf, Leaf]]) -> list[tuple[str, Leaf, Leaf]]:
    """Candidate inputs left out of ``pairs`` that have the shape of a reference input, each with the
    reference input it stands for: the one holding its values, else the first of its shape. A module
    called as ``(q, k, v)`` against one called as ``(x)`` reads every argument: a value tensor that
    is not the reference's input (the block passed another one) is another input, not an extra."""
    paired = {id(a) for _, a, _ in pairs}
    out = []
    for key, a in cand.items():
        if id(a) in paired:
            continue
        shaped = [b for b in ref.values() if tuple(b.shape) == tuple(a.shape)]
        if shaped:
            b = next((b for b in shaped if _bitwise(a, b) or (isinstance(a, TensorSummary) and a == b)), shaped[0])
            out.append((key, a, b))
    return out


def _rerunnable(cand: Record, ref: Record, patterns: Sequence[str] | None) -> bool:
    """Whether the candidate's module may be re-run on its twin's inputs, and they can be given to it."""
    return _may_rerun(cand, ref, patterns) and (patterns is not None or _rerun_inputs(cand, ref) is not None)


def _may_rerun(cand: Record, ref: Record, patterns: Sequence[str] | None) -> bool:
    """Whether the candidate's module may be re-run on its twin's inputs: it has one, the twin's
    arguments were recorded, and ``patterns`` (the ``rerun`` option) names it when given.
    :func:`rerun_fails` answers None where the inputs cannot be given to it."""
    # the twin's recorded arguments are what a re-run needs (a fused twin has no module of its own)
    if cand.module is None or (ref.module is None and not (ref.args or ref.kwargs)):
        return False
    return patterns is None or any(re.search(p, cand.name) for p in patterns)


def _same_structure(cand: Record, ref: Record) -> bool:
    """Whether the reference's arguments fit the candidate's module as they are: the same keys and
    shapes, or twin layers of one type that read their input's axes alike (:data:`_AXES_FIXED`)."""
    if cand.inputs.keys() != ref.inputs.keys() or len(cand.args) != len(ref.args) \
            or cand.kwargs.keys() != ref.kwargs.keys():
        return False
    return _axes_fixed(cand, ref) or all(tuple(cand.inputs[k].shape) == tuple(ref.inputs[k].shape) for k in cand.inputs)


def _left_out(cand: Record, ref: Record) -> bool:
    """Whether the candidate was called as its twin but given None where the twin got a tensor (an
    attention mask its caller never made: a Swin block that skips the shift): the reference's
    arguments then fit it as they are, and its caller, not it, made the difference."""
    if len(cand.args) != len(ref.args) or cand.kwargs.keys() != ref.kwargs.keys():
        return False
    pairs = [*zip(cand.args, ref.args), *((cand.kwargs[k], ref.kwargs[k]) for k in cand.kwargs)]
    missing = False
    for mine, theirs in pairs:
        if mine is None and isinstance(theirs, torch.Tensor):
            missing = True
        elif isinstance(mine, torch.Tensor) != isinstance(theirs, torch.Tensor) or (
                isinstance(mine, torch.Tensor) and tuple(mine.shape) != tuple(theirs.shape)):
            return False
    return missing


# layers whose input axes mean one thing whatever the model (a convolution reads (B, C, H, W), a
# linear layer features last): twins of one such type given inputs of other shapes were given
# other values (a map transposed upstream), not the same values in another layout
_AXES_FIXED = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
               nn.GroupNorm, nn.LayerNorm, nn.Linear, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
               nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)


def _axes_fixed(cand: Record, ref: Record) -> bool:
    return cand.module is not None and type(cand.module) is type(ref.module) and isinstance(cand.module, _AXES_FIXED)


_LAYOUT_TRIES = 6  # re-runs of one module with its twin's inputs in other layouts, at most


def _rerun_inputs(cand: Record, ref: Record) -> tuple[tuple, dict] | None:
    """The reference's recorded inputs in the form the candidate module takes, or None (see
    :func:`_rerun_input_choices`, whose first choice this is)."""
    return next(_rerun_input_choices(cand, ref), None)


def _rerun_input_choices(cand: Record, ref: Record, tol: Tolerance | None = None) -> Iterator[tuple[tuple, dict]]:
    """The reference's recorded inputs in the forms the candidate module may take.

    The same argument structure: the reference's arguments as they are. Otherwise the candidate's
    own arguments with every tensor replaced by the reference input of its shape it stands for
    (:func:`_standing_for`: an attention called as ``(x, x, x)`` against one called as ``(x)``;
    windows and a mask of one shape each their own; permuted where only that makes it hold the
    candidate's values, :func:`_in_own_layout`), or of its element count brought into
    the candidate's layout (``(B, L, C)`` against ``(B, H, W, C)``); nothing if a tensor has no
    counterpart. A layout is first the one closest to the candidate's own input. Where that input
    disagrees with the reference's within ``tol`` in it (an error upstream, which leaves the input
    unable to tell layouts apart: NCHW against NHWC with H == W), the other layouts that fit follow;
    where it agrees, the layout is settled (a kernel with its spatial axes swapped must not pass
    on an input with them swapped too)."""
    if _same_structure(cand, ref) or _left_out(cand, ref):
        padded = _padded_as_given(cand, ref)
        if padded is not None:
            yield (padded,), _cast_like(ref.kwargs, cand.kwargs)
        args, kwargs = _cast_like(ref.args, cand.args), _cast_like(ref.kwargs, cand.kwargs)
        yield args, kwargs
        if tol is not None and not _axes_fixed(cand, ref):
            # twins of other types given inputs of one shape may read them in other layouts (NHWC
            # against NCHW where C == H == W), which values off upstream cannot tell within a
            # tolerance: each positional input also in the layout keeping its shape closest to the
            # candidate's
            closest = [_closest_kept(mine, theirs) for mine, theirs in zip(cand.args, args)]
            if any(c is not theirs for c, theirs in zip(closest, args)):
                yield tuple(closest), kwargs
        return
    if any(not isinstance(v, torch.Tensor) for v in (*cand.inputs.values(), *ref.inputs.values())):
        return
    refs = list(ref.inputs.values())
    if not refs:
        return
    options: dict[int, list[Adapter]] = {}  # per candidate tensor, its layouts: searched once
    for choice in range(_LAYOUT_TRIES if tol is not None else 1):
        used: set[int] = set()
        try:
            shared: set[int] = set()
            translate = _translator(refs, choice, tol, options, used, shared)
            args, kwargs = map_tensors(cand.args, translate), map_tensors(cand.kwargs, translate)
        except LookupError:
            return
        # a tensor the twin was given that no candidate argument stands for (an attention mask)
        # goes where the candidate was given None: its caller never made it
        spare = {k: v for k, v in ref.inputs.items() if id(v) not in used}
        filled = _filled(cand, args, kwargs, spare)
        if filled is not None:
            yield filled
        yield args, kwargs
        if shared:
            # a tensor standing for an input another argument with other values stands for
            # already may be one the twin makes inside, not another input (a shifted-window mask
            # of the windows' size, where the twin masks its own scores): the candidate's own
            keep = _translator(refs, choice, tol, options, shared=set(), keep=True)
            yield map_tensors(cand.args, keep), map_tensors(cand.kwargs, keep)


def _closest_kept(mine: Any, theirs: Any) -> Any:
    """Reference input ``theirs`` through the permutation keeping its shape that brings it closest
    to candidate input ``mine``, where that is closer than it is as it is; else ``theirs``."""
    if not (isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor)) or mine.shape != theirs.shape \
            or not mine.is_floating_point() or _bitwise(theirs, mine):
        return theirs
    kept = in_layout_of(theirs, mine)
    return kept if kept is not None and measure(kept, mine).max_abs < measure(theirs, mine).max_abs else theirs


def _padded_as_given(cand: Record, ref: Record) -> torch.Tensor | None:
    """The twin's one input padded with zeros as the candidate's caller padded the candidate's
    (a "SAME" conv whose wrapper pads before an unpadded conv, against one padding inside), or
    None: for twin convs, where the candidate's map is the twin's grown by a border of zeros.
    Given the twin's map as it is, such a conv returns a smaller map, which no output can be
    compared with."""
    if not (_axes_fixed(cand, ref) and isinstance(cand.module, nn.modules.conv._ConvNd)) \
            or len(cand.args) != 1 or len(ref.args) != 1:
        return None
    mine, theirs = cand.args[0], ref.args[0]
    if not (isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor)):
        return None
    pad = _zero_border(mine, theirs)
    return None if pad is None else nn.functional.pad(theirs.to(mine.dtype), pad)


def _zero_border(big: torch.Tensor, small: torch.Tensor) -> list[int] | None:
    """The ``F.pad`` widths by which ``small``'s map (batch and channels first) grew into ``big``'s
    shape, read off ``big``'s border of zeros (half on each side where the border allows it, the
    extra one after: TensorFlow's "SAME"), or None where the shapes or the border do not allow one."""
    if big.ndim != small.ndim or big.ndim < 3 or big.shape[:2] != small.shape[:2] or big.shape == small.shape \
            or not big.is_floating_point():
        return None
    pad: list[int] = []
    for d in reversed(range(2, big.ndim)):
        grown = big.shape[d] - small.shape[d]
        if grown < 0:
            return None
        held = (big != 0).transpose(0, d).reshape(big.shape[d], -1).any(1).tolist()
        lead = next((i for i, h in enumerate(held) if h), len(held))
        trail = next((i for i, h in enumerate(reversed(held)) if h), len(held))
        low, high = max(0, grown - trail), min(grown, lead)
        if low > high:
            return None  # the border holds values: not a pad of zeros
        left = min(max(grown // 2, low), high)
        pad += [left, grown - left]
    return pad


def _filled(cand: Record, args: tuple, kwargs: dict, spare: dict[str, torch.Tensor]) -> tuple[tuple, dict] | None:
    """``(args, kwargs)`` with the ``spare`` reference tensors in the candidate's None arguments:
    each in the one whose parameter name holds the tensor's name (``attention_mask`` for ``mask``),
    else, one spare and one None, in that one. None when nothing is filled."""
    names = _parameter_names(cand.module, len(args))
    slots = [("args", i, names[i]) for i, v in enumerate(args) if v is None and i < len(names)] + \
        [("kwargs", k, k) for k, v in kwargs.items() if v is None]
    if not spare or not slots:
        return None
    chosen: dict[tuple, torch.Tensor] = {}
    for key, value in spare.items():
        name = key.rpartition(".")[2].lower()
        slot = next((s for s in slots if s[:2] not in chosen and name and not name.isdigit()
                     and (name in s[2].lower() or s[2].lower() in name)), None)
        if slot is not None:
            chosen[slot[:2]] = value
    if not chosen and len(spare) == 1 and len(slots) == 1:
        chosen[slots[0][:2]] = next(iter(spare.values()))
    if not chosen:
        return None
    args = tuple(chosen.get(("args", i), v) for i, v in enumerate(args))
    return args, {k: chosen.get(("kwargs", k), v) for k, v in kwargs.items()}


def _parameter_names(module: nn.Module | None, count: int) -> list[str]:
    """The names of the first ``count`` positional parameters of ``module``'s forward ([] when unknown)."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError, AttributeError):
        return []
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        positional += [f"args.{i}" for i in range(len(positional), count)]
    return positional[:count]


def _translator(refs: list[torch.Tensor], choice: int, tol: Tolerance | None,
                options: dict[int, list[Adapter]], used: set[int] | None = None,
                shared: set[int] | None = None, keep: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """A candidate input -> the reference input standing for it, in the ``choice``-th layout that
    fits (LookupError when there is none, or no such choice; see :func:`_rerun_input_choices`);
    ``options`` keeps each tensor's layouts from choice to choice; ``used`` gathers the ids of the
    reference inputs given; ``shared`` the ids of the candidate tensors given one that another
    tensor, holding other values, took first; ``keep``: those keep their own values instead."""
    used = set() if used is None else used
    shared = set() if shared is None else shared
    given: dict[int, torch.Tensor] = {}  # candidate tensor -> the reference input it stands for
    takers: dict[int, torch.Tensor] = {}  # reference input -> the candidate tensor first given it

    def standing_for(t: torch.Tensor, fitting: list[torch.Tensor]) -> torch.Tensor:
        ref = given.setdefault(id(t), _standing_for(t, fitting, used))
        first = takers.setdefault(id(ref), t)
        if first is not t and not _bitwise(first, t):
            shared.add(id(t))
        used.add(id(ref))
        return ref

    def translate(t: torch.Tensor) -> torch.Tensor:
        same = [r for r in refs if tuple(r.shape) == tuple(t.shape)]
        sized = [r for r in refs if r.numel() == t.numel() and r.numel() > 0]
        source = standing_for(t, same or sized) if same or sized else None
        if keep and id(t) in shared:
            return t
        if same:
            return _in_own_layout(source.to(dtype=t.dtype), t, tol) if t.is_floating_point() else source
        if id(t) not in options:
            closest = find_adapter(source, t) if source is not None else None
            options[id(t)] = [closest] if closest is not None else []
        found = options[id(t)]
        if choice and len(found) == 1 and not measure(found[0].apply(source), t).passes(tol):
            found += [a for a in layouts(source, tuple(t.shape), _LAYOUT_TRIES) if a.description != found[0].description]
        if choice >= len(found):
            raise LookupError(t.shape)
        return found[choice].apply(source).to(dtype=t.dtype)

    return translate


def _in_own_layout(ref: torch.Tensor, t: torch.Tensor, tol: Tolerance | None) -> torch.Tensor:
    """Reference input ``ref`` in the layout of candidate input ``t`` of its shape: as it is, or
    permuted where only a permutation keeping the shape makes it hold ``t``'s values (a head given
    NHWC maps where the reference's gets NCHW ones, C == H == W); as it is where values cannot tell
    (an error upstream)."""
    wide = rounding_tolerance(tol or tolerance_for(t.dtype))
    if measure(ref, t).passes(wide):
        return ref
    kept = kept_permutation(ref, t, wide)
    return ref if kept is None else kept.apply(ref).contiguous()


def _standing_for(t: torch.Tensor, fitting: list[torch.Tensor], used: set[int]) -> torch.Tensor:
    """Of the reference inputs that fit candidate input ``t`` (in argument order), the one it
    stands for: one holding its values (a mask both sides build alike), else the first not given
    to another argument yet (windows and a mask of one shape each keep their own), else the first
    (one value read by several arguments: an attention called as ``(x, x, x)``)."""
    held = next((r for r in fitting if r.shape == t.shape and _bitwise(t, r)), None)
    return held if held is not None else next((r for r in fitting if id(r) not in used), fitting[0])


def _cast_like(value: Any, like: Any) -> Any:
    """``value`` (reference inputs) with floating tensors cast to the dtype/device of ``like``."""
    if isinstance(value, torch.Tensor):
        if isinstance(like, torch.Tensor) and value.is_floating_point() and like.is_floating_point():
            return value.to(dtype=like.dtype, device=like.device)
        return value
    if isinstance(value, (tuple, list)):
        likes = like if isinstance(like, (tuple, list)) and len(like) == len(value) else [None] * len(value)
        items = [_cast_like(v, lk) for v, lk in zip(value, likes)]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        like = like if isinstance(like, dict) else {}
        return {k: _cast_like(v, like.get(k)) for k, v in value.items()}
    return value


def rerun_fails(row: Row, reference: Sequence[Record] = ()) -> bool | None:
    """Run the candidate module on the reference's inputs: True if it still fails (in every layout
    those inputs may take), None if it cannot run. A twin of another type that wraps the one call
    of the candidate module's type among ``reference`` (a depthwise conv paired with a wrapper
    that reshapes tokens to a map for its own conv) is first seen through that call: given its
    map, the candidate gives its output, and received the error (a map whose height and width the
    caller swapped)."""
    inner = _inner_twin(row, reference)
    if inner is not None and rerun_fails(replace(row, match=replace(row.match, reference=inner), rerun_judge=None,
                                                 trailing=None)) is False:
        return False
    choices = _rerun_input_choices(row.match.candidate, row.match.reference, row.tolerance)
    verdicts = (_rerun_verdict(row, inputs) for inputs in choices)
    ran = None
    for fails in verdicts:
        if fails is False:
            return False
        ran = ran or fails
    if ran and not _same_structure(row.match.candidate, row.match.reference) and _right_on_twin_values(row):
        return False
    return ran


_TWIN_VALUE_RUNS = 128  # runs of a module on its twin's inner values, at most


def _right_on_twin_values(row: Row) -> bool:
    """Whether the candidate module, handed in its arguments' places values its twin computes
    inside (the windows it makes of a map its caller shifted, the mask it builds, where the
    candidate's caller makes its windows and leaves its mask out as ``None``), gives another value
    its twin computes there, to a few units in the last place: its code is right, its caller handed
    it what the twin would not have (a Swin block that skipped its shift: the attention is
    innocent). The twin's inputs come in another structure, so only its inner values can stand in."""
    module, cand = row.match.candidate.module, row.match.candidate
    if module is None or not any(True for _ in module.parameters()):
        return False
    inner = [v for v in _inner_values(row) if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()]
    try:
        signature = inspect.signature(module.forward)
        bound = signature.bind(*cand.args, **cand.kwargs)
    except (TypeError, ValueError):
        return False
    bound.apply_defaults()
    if not inner:
        return False
    given_slots: list[tuple[str, list[torch.Tensor]]] = []
    left_out = [name for name, given in bound.arguments.items() if given is None]
    for name, given in bound.arguments.items():
        if isinstance(given, torch.Tensor) and given.is_floating_point():
            fitting = [v for v in inner if v.shape == given.shape and v.dtype == given.dtype][:_REFERENCE_INPUTS]
            if not fitting:
                return False
            given_slots.append((name, fitting))
    if not given_slots:
        return False
    # each left-out input (no mask) at most one at a time, filled with a value of the twin's
    fills = [{}, *({name: v} for name in left_out for v in (*(v.squeeze() for v in inner if 1 in v.shape), *inner))]
    exact = Tolerance(0.0, _SAME_INPUT_ULPS * torch.finfo(inner[0].dtype).eps)
    runs = ((dict(zip((n for n, _ in given_slots), values)), fill)
            for values in itertools.product(*(options for _, options in given_slots)) for fill in fills)
    for values, fill in itertools.islice(runs, _TWIN_VALUE_RUNS):
        run = inspect.BoundArguments(signature, {**bound.arguments, **{n: v.clone() for n, v in {**values, **fill}.items()}})
        try:
            with torch.no_grad():
                made = module(*run.args, **run.kwargs)
        except Exception:  # values of those shapes the module does not take together
            continue
        out = next(iter(flatten_tensors(made).values()), None)
        if isinstance(out, torch.Tensor) and not any(_bitwise(out, v) for v in values.values()) \
                and _holds_any(out, inner, exact):
            return True
    return False


def _inner_twin(row: Row, reference: Sequence[Record]) -> Record | None:
    """The one call nested in ``row``'s twin whose module is of the candidate module's class, when
    the twin's own module is of another; else None."""
    cand, twin = row.match.candidate, row.match.reference
    kind = type(cand.module)
    if cand.module is None or type(twin.module) is kind or row.trailing is not None:
        return None
    inner = [r for r in reference if r is not twin and twin.contains(r) and type(r.module) is kind]
    return inner[0] if len(inner) == 1 else None


def _rerun_verdict(row: Row, inputs: tuple[tuple, dict]) -> bool | None:
    cand, ref = row.match.candidate, row.match.reference
    # copies: an in-place module must not write into the recorded trace
    args, kwargs = (map_tensors(x, torch.Tensor.clone) for x in inputs)
    received: dict[str, Any] = {}
    # a copy: the call may write into its input (an in-place ReLU)
    hook = None if row.trailing is None else row.trailing.register_forward_pre_hook(
        lambda module, given: received.update(value=given[0].clone() if given and isinstance(given[0], torch.Tensor) else None))
    try:
        with torch.no_grad():
            out = cand.module(*args, **kwargs)
    except Exception:  # a signature that only looked compatible: no verdict from re-running
        return None
    finally:
        if hook is not None:
            hook.remove()
    if row.trailing is not None:
        out = received.get("value")  # what the call the twin leaves to its caller received
        if not isinstance(out, torch.Tensor):
            return None
    outputs = {k: v.detach() for k, v in flatten_tensors(out).items()}
    judged = row.rerun_judge(outputs) if row.rerun_judge is not None else None
    if judged is not None:
        return judged
    # a module may turn the reference's layout into its own inside, as its row was measured; inputs
    # brought into the candidate's layout: its output may be in that layout whatever its shape, rolled too
    translated = not _same_structure(cand, ref)
    kept = kept_rolled_layout(row.match, row.tolerance)  # the twins' layout, as their row was measured
    return not _worst_adapted(_leaf_pairs(outputs, ref.outputs), row.tolerance, kept, keep_shape=True,
                              rolls=translated)[2]


@dataclass
class Localization:
    """Where the error is: see the module docstring."""

    first_divergence: str | None = None
    culprit: str | None = None
    introduced: list[str] = field(default_factory=list)  # every origin, in execution order
    notes: list[str] = field(default_factory=list)
    # what an origin without a twin left out, where its values show it (report diagnosis entries)
    findings: list[dict] = field(default_factory=list)


def localize(rows: list[Row], *, rerun: Sequence[str] | None = None) -> tuple[str | None, str | None]:
    """Set each row's status; return (first_divergence, culprit) as candidate names."""
    found = localize_all(rows, rerun=rerun)
    return found.first_divergence, found.culprit


def localize_all(
    rows: list[Row],
    *,
    rerun: Sequence[str] | None = None,
    untwinned: Sequence[Record] = (),
    reference: Sequence[Record] = (),
) -> Localization:
    """Set each row's status and find every origin of an error (see the module docstring).

    ``untwinned``: the candidate's calls without a twin (unmatched, not pass-through);
    ``reference``: the reference's calls, against whose values an untwinned call is vouched for.
    """
    for row in rows:
        if not row.passed and row.match.how == "structure":
            row.status = "tentative"
    failing = [r for r in rows if not r.passed and r.match.how != "structure"]
    found = Localization()
    if not failing:
        guesses = [r for r in rows if not r.passed]
        if guesses:
            found.notes.append(f"only structural guesses fail ({', '.join(r.key for r in guesses[:5])}): "
                               f"pairings by shape alone, not evidence of an error")
        return found
    classify(failing, lambda r: _inputs_state(r.match.candidate, r.match.reference, r.tolerance),
             lambda r: rerun_fails(r, reference) if _may_rerun(r.match.candidate, r.match.reference, rerun) else None)
    origins: list[tuple[int, str]] = []  # (completion position, candidate name)
    calls = [*(r.match.candidate for r in rows), *untwinned]
    for row in (r for r in rows if r.status == "introduced"):
        origin = _untwinned_origin(row, rows, untwinned, reference, rerun)
        if origin is None:
            origins.append((row.match.candidate.end, row.candidate))
            continue
        row.status = "contains"
        origins.append((origin.end, origin.name))
        found.findings += _left_out_after(origin, _failing_after(rows, origin), calls)
        children = [u.name for u in untwinned if origin.contains(u)]
        found.notes.append(f"the error starts inside {origin.name}, which has no twin in the reference"
                           + (f" (nor have its children {', '.join(children[:6])})" if children else "")
                           + f"; {row.candidate} around it is the innermost module with a twin")
    for row in failing:  # an error received from nowhere was made by code without a twin
        earlier = any(o.match.candidate.end < row.match.candidate.start for o in failing)
        # (past an origin in the model's own code, which no call holds, every error is downstream)
        if row.status != "propagated" or earlier or _made_around(row, failing) \
                or any(end < row.match.candidate.start or name == ROOT for end, name in origins):
            continue
        # the innermost confirmed call around it first; then each wider one (and then anywhere)
        # before the narrower one started: the code without a twin may sit before the block that
        # receives its error (an embedding's token)
        around = [r for r in rows if r.match.how != "structure" and r.match.candidate.contains(row.match.candidate)]
        scopes = [*sorted(around, key=lambda r: r.match.candidate.end - r.match.candidate.start), None]
        limits = [row.match.candidate, *(scope.match.candidate for scope in scopes[:-1])]
        origin = next(filter(None, (_untwinned_origin(outer, rows, untwinned, reference, rerun, limit=limit)
                                    for outer, limit in zip(scopes, limits))), None)
        if origin is not None:
            origins.append((origin.end, origin.name))
            found.notes.append(f"the error {row.candidate} receives starts in {origin.name}, which has no twin "
                               f"in the reference")
            found.findings += _left_out_after(origin, row, calls)
        elif not any(c.name == ROOT for c in calls):
            # the candidate was run through a method of its own (``candidate_call``), whose code no
            # recorded call holds: an error no call made starts there (a position table added in the
            # model's own code), so the model itself is named
            origins.append((row.match.candidate.start, ROOT))
            found.notes.append(f"the error {row.candidate} receives starts in code the candidate model runs "
                               f"outside its modules (the method called on it), named {ROOT}")
    origins.sort()
    found.introduced = list(dict.fromkeys(name for _, name in origins))
    # an origin without a confirmed twin (code without a twin, a failing guess) that completed before
    # the first failing confirmed call is where the outputs first differ: it is the first divergence
    first = failing[0]
    early = origins and origins[0][0] < first.match.candidate.end
    found.first_divergence = origins[0][1] if early else first.candidate
    found.culprit = found.introduced[0] if found.introduced else None
    culprit_row = next((r for r in rows if r.status == "introduced" and r.candidate == found.culprit), None)
    if culprit_row is not None:
        found.findings += _argument_findings(culprit_row, rows, calls, reference)
    found.notes += _folding_notes([r for r in rows if r.status == "introduced"], reference)
    return found


def _made_around(row: Row, failing: Sequence[Row]) -> bool:
    """Whether a row making the error around ``row`` was given its twin's inputs: its own code, run
    before ``row``, made what ``row`` received (a block that skips its shift, around its attention)."""
    return any(o.status == "introduced" and o.match.candidate.contains(row.match.candidate)
               and _inputs_state(o.match.candidate, o.match.reference, o.tolerance) != "differ" for o in failing)


def _folding_notes(origins: Sequence[Row], reference: Sequence[Record]) -> list[str]:
    """A note for each origin whose output holds what its twin and the reference call reading the
    twin's output give together: the two steps are one in the candidate (a batch norm folded into
    its conv), so these twins cannot agree one by one, and their weights are not the suspects."""
    notes = []
    for row in origins:
        twin, out = row.match.reference, row.match.candidate.primary
        reader = min((r for r in reference if r.start > twin.end and _bitwise(r.first_input, twin.primary)),
                     key=lambda r: r.start, default=None)
        if reader is not None and reader.primary is not None and _holds_any(out, [reader.primary], row.tolerance):
            notes.append(f"{row.candidate} gives what the reference's {twin.name} and then {reader.name} give "
                         f"together: the candidate does both in one step ({reader.name} folded into it?), so the "
                         f"two cannot be checked one by one; compare with it unfolded, or fold the reference alike")
    return notes


def classify(failing: Sequence[Any], state: Callable[[Any], str], rerun: Callable[[Any], bool | None]) -> None:
    """Mark failing rows ``introduced``, ``contains`` or ``propagated`` (see the module docstring).

    ``state(row)``: how the row's inputs compare with the twin's (``equal``, ``close``, ``differ``);
    ``rerun(row)``: whether the row still fails on the twin's inputs, None when it cannot be re-run.
    Shared by the forward rows and the gradient rows (:mod:`harness.backward`)."""
    makes: list[Any] = []
    for row in failing:
        how = state(row)
        verdict = rerun(row) if how != "equal" else None
        row.reran = verdict is not None
        if verdict is None:
            verdict = how != "differ"
        if verdict:
            makes.append(row)
        else:
            row.status = "propagated"
    for row in makes:
        inner = any(row.match.candidate.contains(o.match.candidate) for o in makes if o is not row)
        row.status = "contains" if inner else "introduced"


def _untwinned_origin(row: Row | None, rows: list[Row], untwinned: Sequence[Record], reference: Sequence[Record],
                      rerun: Sequence[str] | None, limit: Record | None = None) -> Record | None:
    """The innermost candidate call without a twin (or with a failing guess) inside ``row``'s call
    (anywhere when None) that completed after the last agreeing call and before the first failing
    one inside it (or before ``limit`` starts), and whose output the reference never computed."""
    outer = row.match.candidate if row is not None else None

    def within(record: Record) -> bool:
        return outer is None or outer.contains(record)

    inside = [r for r in rows if within(r.match.candidate)]
    confirmed = [r for r in inside if r.match.how != "structure"]
    first_bad = limit or next((r.match.candidate for r in confirmed if not r.passed), None)
    end = first_bad.start if first_bad is not None else (outer.end if outer is not None else None)
    if end is None:
        return None
    good_ends = [r.match.candidate.end for r in inside if r.passed and r.match.candidate.end < end]
    since = max(good_ends, default=outer.start if outer is not None else -1)
    # a row handed an error that, re-run on its twin's inputs, still fails, while every call inside
    # it only passes on what it receives: the error grows where a call's input is not what the
    # candidate's previous value gives through the reference's step between their twins
    step = _grown_step(row, confirmed, reference) if row is not None and row.reran and limit is None else None
    if step is not None:
        last_step, first_bad = step
        since = last_step.end if last_step is not None else outer.start
        end = first_bad.start
    suspects = [u for u in untwinned if within(u) and since < u.end < end]
    # a call made from its own tensors alone (a relative position bias built from its table) may run
    # before the last agreeing call: its value enters where a call that does not agree reads it
    agreeing = [r.match.candidate for r in inside if r.passed]
    readers = [*(r.match.candidate for r in inside if not r.passed), *(u for u in untwinned if within(u))]
    suspects += [u for u in untwinned if within(u) and u.end <= since and _from_own_tensors(u)
                 and outputs_read_after(u, readers) and not outputs_read_after(u, agreeing)]
    # a failing guess that gives its guessed twin's output from that twin's inputs received the
    # error (a shared ReLU after a dropped residual add); one that does not may have made it
    guesses = [r for r in inside if r.status == "tentative" and since < r.match.candidate.end < end
               and not _guess_received(r, rerun)]
    suspects += [r.match.candidate for r in guesses]
    # a guess that still fails on its twin's own inputs is not vouched for by its twin's value (a
    # tanh GELU within a float32 tolerance of the exact one it replaces)
    disowned = {id(r.match.candidate): r.match.reference.primary for r in guesses if r.guess_reran}
    # nor is an untwinned call without parameters that holds a reference call's output only within
    # the tolerance, yet gives another value when run on that call's own inputs (a tanh GELU within
    # a float32 tolerance of the exact one): on the same inputs, the same computation agrees to
    # its last bits
    tol = row.tolerance if row is not None else None
    for u in suspects:
        apart = None if id(u) in disowned else _differs_on_same_inputs(u, _pool(row, reference), tol)
        if apart is not None:
            disowned[id(u)] = apart
    # a call inside a module that gives its twin's output when re-run on its twin's inputs did its
    # part right there: what it was handed is wrong (a pooling head's attention fed un-normed state)
    cleared = suspects
    suspects = _uncleared([u for u in suspects if not _inside_received(u, rows)], row, reference, disowned)
    # nor one that gives what a reference call without a twin gives, run on that call's inputs:
    # its own code is right, its caller calls it elsewhere (a GELU applied before the depthwise
    # conv it should follow)
    twinned = {id(r.match.reference) for r in rows}
    suspects = [u for u in suspects if not _computes_as(u, [r for r in _pool(row, reference) if id(r) not in twinned],
                                                        row.tolerance if row is not None else None)]
    # nor one that only rearranges what it was handed, as an op of the reference rearranges one of
    # its values into another (a Permute back to NCHW after the step its caller left out: the
    # reference permutes the scaled value, the candidate's code never scaled it)
    if suspects and row is not None:
        known = _known_values(row, reference)
        suspects = [u for u in suspects if not _rearranges_as_reference(u, known, row.tolerance)]
        # nor one that, run on a value the reference computes in its input's place, gives one the
        # reference computes too: handed the right input it does its part (a query projection split
        # from a fused qkv, given windows its block forgot to shift), so it only received the error
        suspects = [u for u in suspects if not _right_on_reference_input(u, known, row.tolerance)]
    if not suspects:
        if first_bad is None:
            # nothing inside fails: the error is made after the last agreeing call, by the code
            # of an untwinned call whose output ``row`` returns as it is, or by ``row``'s own; or
            # by a failing guess returning what its guessed twin receives (a conv with its norm
            # folded in that skips its ReLU: it stops where the reference goes on)
            return _returning_frame(cleared, inside, since, row, reference, _model(rows)) \
                or _handing_on_guess(cleared, inside, _model(rows))
        calls = [*(r.match.candidate for r in rows), *untwinned]
        # a call returning its child's value as it is, where the reference adds its input to it
        # next: a residual layer that lost its add (a torch container only where no call around
        # it has a twin whose own code could have left the add out)
        failing_row = next((r for r in rows if r.match.candidate is first_bad), None)
        wrapper = _bare_wrapper(cleared, calls, failing_row, own_code=outer is not None)
        if wrapper is not None:
            return wrapper
        # or one that returns its child's value as it is though it holds tensors of its own, where the
        # failing call's twin is handed another value: it left out what it does with them (an
        # embeddings no longer adding its position table, the add moved to a later layer)
        holder = _unused_holder(cleared, calls, failing_row)
        if holder is not None:
            return holder
        # the error may be made by an untwinned container's own code, before the failing call:
        # the innermost that does not hand the failing call its own input unchanged (a Sequential
        # passes its input on; an encoder that adds a position table before its layers does not)
        guesses = [r.match.candidate for r in inside if r.match.how == "structure" and not r.passed]
        enclosing = sorted((u for u in (*untwinned, *guesses) if within(u) and u.contains(first_bad)),
                           key=lambda u: -u.start)
        around = [u for u in enclosing if u.start > since]
        found = next((u for u in around if not _hands_on(u, first_bad)), None)
        # else one holding tensors of its own, which only its own code reads: handing its input on
        # as it came, it left out what it does with them (an encoder's position table not added);
        # not one handed another value than the last agreeing one, which its caller's code made (a
        # folded conv-norm given the half of the channels its unit should have kept)
        last_value = next((r.match.candidate.primary for r in inside if r.passed and r.match.candidate.end == since),
                          outer.first_input if outer is not None and since == outer.start else None)
        found = found or next((u for u in around if _holds_own_tensors(u.module)
                               and (last_value is None or _holds_any(u.first_input, [last_value], row and row.tolerance))),
                              None)
        # else the innermost with a forward of its own: it hands its input on as it came, where the
        # twin's code gives that call another value (a norm called before the modulation it follows)
        found = found or next((u for u in around if _own_forward(u.module)
                               and _routed_otherwise(u, failing_row, reference, row and row.tolerance)), None)
        # else a failing guess that returns what its guessed twin receives: the twin's operation
        # (a backbone's final norm) is what it left out
        found = found or _handing_on_guess(cleared, inside, _model(rows))
        # else the call whose code runs between the last agreeing call and the failing one: the
        # innermost around both, when it has no twin (a Sequential whose ReLU slot holds an
        # Identity; a feed-forward reshaping its tokens wrongly between its linear and its conv)
        # (the failing call's own gap: not a wider scope's, whose bounds are its calls, not errors)
        # (only where one reference call turns what the last agreeing call's twin gives into what
        # the failing call's twin receives: the step the candidate's code left out; twins paired
        # wrongly, a main-branch norm with the shortcut's, are no such gap: the map's check undoes them)
        if found is None and step is not None:
            found = _gap_frame(enclosing, [*(r.match.candidate for r in rows), *untwinned], step[0], first_bad)
        if found is None and limit is None and _bridged(inside, since, failing_row, reference):
            last = _last_agreeing(inside, since).match.candidate  # _bridged found it
            found = _gap_frame(enclosing, [*(r.match.candidate for r in rows), *untwinned], last, first_bad)
        # nor one handed a value the reference never computes (a class token joined after the
        # patches): the error was made before it was called, by the code around it (unless the
        # step showed it grew there: downstream of an error, nothing is a value the reference computes)
        if found is not None and step is None \
                and _received_unknown(found, _known_values(row, reference), row and row.tolerance):
            return None
        return found
    # innermost: the earliest to complete; its untwinned parents completed later
    return min(suspects, key=lambda u: u.end)


_COUNTERPARTS = 4  # reference calls without a twin an untwinned call is run on, at most


def _grown_step(row: Row, confirmed: Sequence[Row], reference: Sequence[Record]) -> tuple[Record | None, Record] | None:
    """``(last, first)``: of the calls inside ``row`` (an error handed to it, which it still makes
    given its twin's inputs), where each failing one only receives its error (given its twin's
    inputs, it agrees), the first whose input is not what the candidate's value before it (``last``'s
    output; ``row``'s input when None) gives through the reference's step between their twins: as
    it is, or through the one reference call between them (a GELU applied by the port's own code,
    tanh where the reference's is exact). None where every step is taken alike, or cannot be told."""
    outer, pool = row.match.candidate, _pool(row, reference)  # the steps are taken inside the twin
    kids = sorted((r for r in confirmed if r is not row and outer.contains(r.match.candidate)),
                  key=lambda r: r.match.candidate.start)
    for kid in kids:
        if kid.passed:
            continue
        if kid.status != "propagated" or not kid.reran:
            return None
        start = kid.match.candidate.start
        last = max((r for r in kids if r.match.candidate.end < start), key=lambda r: r.match.candidate.end, default=None)
        given = (last.match.candidate.primary, last.match.reference.primary) if last is not None \
            else (outer.first_input, row.match.reference.first_input)
        wanted = (kid.match.candidate.first_input, kid.match.reference.first_input)
        if _steps_apart(given, wanted, kid.tolerance, pool):
            return (last.match.candidate if last is not None else None), kid.match.candidate
    return None


def _steps_apart(given: tuple[Any, Any], wanted: tuple[Any, Any], tol: Tolerance, reference: Sequence[Record]) -> bool:
    """Whether the candidate goes from ``given[0]`` to ``wanted[0]`` otherwise than the reference goes
    from ``given[1]`` to ``wanted[1]``: handing it on (in any layout), or through one reference call,
    run on the candidate's value. False where the reference's step is not one of these."""
    if not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in (*given, *wanted)):
        return False
    if _holds_any(wanted[1], [given[1]], tol):
        return not _holds_any(wanted[0], [given[0]], tol)
    for bridge in _bridges(given[1], wanted[1], tol, reference)[:_COUNTERPARTS]:
        source, like = given[0], bridge.first_input
        if bridge.module is None or len(bridge.args) != 1 or not isinstance(like, torch.Tensor):
            continue
        adapter = AS_IS if source.shape == like.shape else find_adapter(source, like, remember=False)
        if adapter is None:
            continue
        try:
            with torch.no_grad():
                out = bridge.module(adapter.apply(source).to(like.dtype).clone())
        except Exception:  # a signature that only looked compatible
            continue
        if isinstance(out, torch.Tensor):
            return not _holds_any(wanted[0], [out.to(wanted[0].dtype)], tol)
    return False


def _computes_as(call: Record, others: Sequence[Record], tol: Tolerance | None) -> bool:
    """Whether ``call``'s module, one without parameters (its code alone decides what it gives),
    run on the inputs of one of ``others`` (reference calls given inputs of its own inputs'
    shapes), gives that call's output."""
    if call.module is None or not call.args or any(True for _ in call.module.parameters()):
        return False
    # a counterpart handing its input on as it is (an Identity, a ReLU on values already >= 0)
    # proves nothing: any function that leaves those values alone gives its output too
    shaped = [r for r in others if r.module is not None and r.inputs and _shaped_alike(call.inputs, r.inputs)
              and not _holds_any(r.primary, [r.first_input], tol)]
    for other in shaped[:_COUNTERPARTS]:
        for args, kwargs in _rerun_input_choices(call, other):
            args, kwargs = (map_tensors(x, torch.Tensor.clone) for x in (args, kwargs))  # an in-place call
            try:
                with torch.no_grad():
                    out = call.module(*args, **kwargs)
            except Exception:  # a signature that only looked compatible
                continue
            got = {k: v.detach() for k, v in flatten_tensors(out).items()}
            if got and _worst(_leaf_pairs(got, other.outputs), tol or tolerance_for(next(iter(got.values())).dtype))[2]:
                return True
    return False


def _from_own_tensors(call: Record) -> bool:
    """Whether ``call`` was handed no floating tensor: what it returns it made from its own tensors."""
    return not any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in call.inputs.values())


def _rearranges_as_reference(call: Record, known: Sequence[Any], tol: Tolerance) -> bool:
    """Whether ``call``'s module, one without parameters whose output holds its one input's elements
    bitwise in another arrangement (a permute, a reshape), turns one of ``known`` (values the
    reference computes) of its input's shape into another of them: the reference takes the same
    step, so the call's code is right wherever its input went wrong. A wrong arrangement (height
    and width swapped) gives no value the reference computes."""
    given, out = call.first_input, call.primary
    if call.module is None or len(call.args) != 1 or any(True for _ in call.module.parameters()) \
            or not isinstance(given, torch.Tensor) or not isinstance(out, torch.Tensor) \
            or not given.is_floating_point() or given.numel() != out.numel() or given.numel() == 0 \
            or not torch.equal(given.detach().flatten().sort().values, out.detach().flatten().sort().values):
        return False
    for value in known:
        if not isinstance(value, torch.Tensor) or value.shape != given.shape or value.dtype != given.dtype:
            continue
        try:
            with torch.no_grad():
                made = call.module(value.clone())
        except Exception:  # a module that does not take the value as it is
            continue
        if isinstance(made, torch.Tensor) and not _bitwise(made, value) and any(_bitwise(made, v) for v in known):
            return True
    return False


_REFERENCE_INPUTS = 4  # values of a suspect's input shape it is run on, at most


def _right_on_reference_input(call: Record, known: Sequence[Any], tol: Tolerance) -> bool:
    """Whether ``call``'s module, one with parameters, run on one of ``known`` (values the reference
    computes) of its one input's shape in place of what it was handed, gives another of them, to a
    few units in the last place in any layout (``tol``: what sets the value given apart): given the reference's value there, its code and weights compute the
    reference's. (One without parameters is judged by its arrangement, :func:`_rearranges_as_reference`:
    any layout would clear a permute swapping height and width.)"""
    given = call.first_input
    if call.module is None or len(call.args) != 1 or not isinstance(given, torch.Tensor) \
            or not given.is_floating_point() or not any(True for _ in call.module.parameters()):
        return False
    fitting = [v for v in known if isinstance(v, torch.Tensor) and v.shape == given.shape and v.dtype == given.dtype]
    for value in fitting[:_REFERENCE_INPUTS]:
        try:
            with torch.no_grad():
                made = call.module(value.clone())
        except Exception:  # a module that does not take the value as it is
            continue
        # to a few units in the last place: a weight off by less than the tolerance is still off
        exact = Tolerance(0.0, _SAME_INPUT_ULPS * torch.finfo(given.dtype).eps)
        if isinstance(made, torch.Tensor) and not _holds_any(made, [value], tol) and _holds_any(made, known, exact):
            return True
    return False


_SAME_INPUT_ULPS = 64  # how far one computation, given the same inputs, may round apart (a formula rewritten)


def _differs_on_same_inputs(call: Record, pool: Sequence[Record], tol: Tolerance | None) -> torch.Tensor | None:
    """The output of the first of ``pool`` (reference calls) that ``call``, one without parameters,
    holds within ``tol`` but not bitwise, when ``call``'s module run on that call's inputs gives
    something else beyond a few units in the last place of its values; None otherwise (vouched
    for, or nothing to run it on)."""
    out = call.primary
    if call.module is None or not call.args or any(True for _ in call.module.parameters()) \
            or not isinstance(out, torch.Tensor) or not out.is_floating_point():
        return None
    near = [r for r in pool if r.module is not None and r.inputs and isinstance(r.primary, torch.Tensor)
            and not _bitwise(out, r.primary) and _holds_any(out, [r.primary], tol)
            and not _holds_any(r.primary, [r.first_input], tol)]  # one handing its input on proves nothing
    for other in near[:_COUNTERPARTS]:
        exact = Tolerance(0.0, _SAME_INPUT_ULPS * torch.finfo(other.primary.dtype).eps)
        ran = False
        for args, kwargs in _rerun_input_choices(call, other, tol):
            args, kwargs = (map_tensors(x, torch.Tensor.clone) for x in (args, kwargs))  # an in-place call
            try:
                with torch.no_grad():
                    got = {k: v.detach() for k, v in flatten_tensors(call.module(*args, **kwargs)).items()}
            except Exception:  # a signature that only looked compatible
                continue
            ran = ran or bool(got)
            if got and _worst(_leaf_pairs(got, other.outputs), exact)[2]:
                return None
        if ran:
            return other.primary
    return None


def _bridged(inside: Sequence[Row], since: int, failing: Row | None, reference: Sequence[Record]) -> bool:
    """Whether the ``failing`` call's twin receives what the last agreeing call's twin gives, as
    it is or through one reference call (a ReLU between two linears)."""
    last = _last_agreeing(inside, since)
    if last is None or failing is None:
        return False
    given, wanted, tol = last.match.reference.primary, failing.match.reference.first_input, failing.tolerance
    if not isinstance(given, torch.Tensor) or not isinstance(wanted, torch.Tensor):
        return False
    if _holds_any(wanted, [given], tol):  # handed on directly: the candidate's code in between changed it
        return True
    return bool(_bridges(given, wanted, tol, reference))


def _last_agreeing(inside: Sequence[Row], since: int) -> Row | None:
    """The agreeing row whose candidate call completed at ``since`` (the last agreeing call)."""
    return next((r for r in inside if r.passed and r.match.candidate.end == since), None)


def _bridges(given: torch.Tensor, wanted: torch.Tensor, tol: Tolerance, reference: Sequence[Record]) -> list[Record]:
    """The reference calls that receive ``given`` and return ``wanted``: the one step between them."""
    return [r for r in reference if r.first_input is not None and r.primary is not None
            and _holds_any(r.first_input, [given], tol) and _holds_any(r.primary, [wanted], tol)]


def _returning_frame(cleared: Sequence[Record], inside: Sequence[Row], since: int, row: Row | None,
                     reference: Sequence[Record], model: nn.Module | None) -> Record | None:
    """The innermost of the ``cleared`` calls that holds the last agreeing call and returns as it is
    what ``row``'s call returns, where one reference call (the bridge) turns the last agreeing
    call's twin's output into ``row``'s twin's output: the step left out. ``row``'s code only hands
    that value on, so the code that could have applied the step is the returning call's (a wrapped
    model whose final norm is replaced by ``Identity``); so too where the bridge turns what the
    returning call gives into ``row``'s twin's output (a fusion module of the port's own that left
    out the ReLU after its sums, which the original applies by a module after its fusion layers).
    Not one outside which the candidate holds a copy of the bridge's weights: that holder's caller
    skipped it (a root skipping its own norm)."""
    last = _last_agreeing(inside, since)
    if row is None or last is None:
        return None
    given, wanted, tol = last.match.reference.primary, row.match.reference.primary, row.tolerance
    if not isinstance(given, torch.Tensor) or not isinstance(wanted, torch.Tensor):
        return None
    returning = [u for u in cleared if u.contains(last.match.candidate) and u.end > since
                 and _bitwise(u.primary, row.match.candidate.primary)]
    bridges = _bridges(given, wanted, tol, reference)
    if not bridges and returning and isinstance(returning[0].primary, torch.Tensor):
        bridges = _bridges(returning[0].primary, wanted, tol, reference)  # all return one value
    found = [u for u in returning if not any(_held_elsewhere(b.module, model, u.name) for b in bridges)]
    return min(found, key=lambda u: u.end - u.start, default=None) if bridges else None


def _gap_frame(enclosing: Sequence[Record], calls: Sequence[Record], last: Record | None,
               first_bad: Record) -> Record | None:
    """The innermost of ``calls`` around both ``last`` (the last agreeing call) and ``first_bad``,
    when it is one of ``enclosing`` (without a twin) and changed what it handed ``first_bad``."""
    if last is None:
        return None
    frame = min((c for c in calls if c.contains(last) and c.contains(first_bad)), key=lambda c: c.end - c.start,
                default=None)
    return frame if frame is not None and any(frame is u for u in enclosing) and not _hands_on(frame, first_bad) \
        else None


def _unused_holder(cleared: Sequence[Record], calls: Sequence[Record], failing: Row | None) -> Record | None:
    """The innermost of the ``cleared`` calls with a forward of its own and tensors of its own that
    hands its input on to the first call nested in it and returns a nested call's output as it is,
    where the ``failing`` call's twin is handed a value other than that output."""
    if failing is None:
        return None
    wanted = failing.match.reference.first_input
    found = [u for u in cleared if _own_forward(u.module) and _holds_own_tensors(u.module)
             and any(c is not u and u.contains(c) and _bitwise(c.primary, u.primary) for c in calls)
             and _first_handed_on(u, calls)
             and isinstance(wanted, torch.Tensor) and not _holds_any(u.primary, [wanted], failing.tolerance)]
    return min(found, key=lambda u: u.end - u.start, default=None)


def _first_handed_on(container: Record, calls: Sequence[Record]) -> bool:
    """Whether the first of ``calls`` nested in ``container`` received its input as it came: its
    own code did nothing before it (an encoder that adds its position table to what it hands its
    layers used its tensors)."""
    first = min((c for c in calls if c is not container and container.contains(c)), key=lambda c: c.start, default=None)
    return first is None or _hands_on(container, first)


def _model(rows: Sequence[Row]) -> nn.Module | None:
    """The candidate model: the module of the widest call."""
    widest = max(rows, key=lambda r: r.match.candidate.end - r.match.candidate.start, default=None)
    return widest.match.candidate.module if widest is not None else None


def _handing_on_guess(cleared: Sequence[Record], rows: Sequence[Row], model: nn.Module | None) -> Record | None:
    """The innermost of the ``cleared`` calls that is a failing guess returning its guessed twin's
    input (not its output): where the reference goes on to apply the twin, it stops. Not one whose
    twin's weights the candidate holds outside it (a root norm the root skipped is the root's), nor
    a torch container returning what a confirmed twin inside it returns (it only wraps that twin)."""
    suspects = {id(u) for u in cleared}
    # a torch container returning what a confirmed twin inside it returns only wraps that twin: it
    # has no code of its own that could stop short (a conv-norm-activation Sequential guessed for a
    # dropped squeeze-excitation, whose norm and activation are paired already); a backbone with a
    # forward of its own returning its last layer's output may have left its final norm out
    confirmed = [r.match.candidate for r in rows if r.match.how != "structure"]

    def wraps_twin(call: Record) -> bool:
        return not _own_forward(call.module) and any(
            call.contains(inner) and inner is not call and _bitwise(inner.primary, call.primary) for inner in confirmed)

    found = [r.match.candidate for r in rows if r.match.how == "structure" and not r.passed
             and id(r.match.candidate) in suspects and not wraps_twin(r.match.candidate)
             and _holds_any(r.match.candidate.primary, [r.match.reference.first_input], r.tolerance)
             and not _holds_any(r.match.candidate.primary, [r.match.reference.primary], r.tolerance)
             and not _held_elsewhere(r.match.reference.module, model, r.candidate)]
    return min(found, key=lambda u: u.end - u.start, default=None)


def _held_elsewhere(twin: nn.Module | None, model: nn.Module | None, name: str) -> bool:
    """Whether a module of ``model`` outside the one called ``name`` holds a tensor equal to one of
    ``twin``'s parameters (the weight map put the candidate's copy there)."""
    if twin is None or model is None:
        return False
    params = [p for p in twin.parameters() if p.is_floating_point()]
    for path, module in model.named_modules():
        if path == name or path.startswith(f"{name}."):
            continue
        own = list(module.parameters(recurse=False))
        if any(a.shape == b.shape and torch.equal(a.detach(), b.detach().to(a.dtype)) for a in own for b in params):
            return True
    return False


def _inside_received(call: Record, rows: Sequence[Row]) -> bool:
    """Whether ``call`` is nested in a confirmed row that received its error: re-run on its twin's
    inputs, it agrees, so every call inside it computes right on right inputs."""
    return any(r.status == "propagated" and r.reran and r.match.how != "structure"
               and r.match.candidate is not call and r.match.candidate.contains(call) for r in rows)


def _bare_wrapper(cleared: Sequence[Record], calls: Sequence[Record], failing: Row | None,
                  own_code: bool = False) -> Record | None:
    """The innermost cleared suspect that returns a nested call's output as it is where the
    ``failing`` call's twin reads that output plus the suspect's input (a residual layer that lost
    its add returns its branch's value, one the reference computes, while the reference goes on
    adding): every call there passed its value on unchanged, so an operation was left out, and the
    wrapper, whose call exists to do something around its child, is where. ``own_code``: only a
    module with a forward of its own (not a torch container, which only chains its children).
    None when there is no such call."""
    wrappers = [u for u in cleared if (not own_code or _own_forward(u.module)) and _left_out_after(u, failing, calls)]
    return min(wrappers, key=lambda u: u.end - u.start, default=None)


def _routed_otherwise(container: Record, failing: Row | None, reference: Sequence[Record], tol: Tolerance | None) -> bool:
    """Whether a reference call around the ``failing`` call's twin received what ``container``
    received: given the same value, the reference's code routes it otherwise (a norm after the
    branch, not before), so the container's own code made the difference, not what it was given."""
    if failing is None:
        return False
    twin, given = failing.match.reference, container.first_input
    return any(r is not twin and r.contains(twin) and _holds_any(given, [r.first_input], tol) for r in reference)


def _holds_own_tensors(module: nn.Module | None) -> bool:
    """Whether ``module`` holds a parameter or floating buffer itself (not through a child)."""
    return module is not None and any(t.is_floating_point() for t in (*module.parameters(recurse=False),
                                                                      *module.buffers(recurse=False)))


def _own_forward(module: nn.Module | None) -> bool:
    """Whether ``module``'s class has a forward written outside torch (not a Sequential's chaining)."""
    forward = getattr(type(module), "forward", None) if module is not None else None
    return forward is not None and not getattr(forward, "__module__", "").startswith("torch.")


def _finding(*fields: Any) -> dict:
    """A report diagnosis entry, built as the operation-level diagnosis builds its own."""
    from harness.diagnose import _finding as finding  # diagnose re-runs modules; localize only needs its format
    return finding(*fields)


def _argument_findings(row: Row, rows: Sequence[Row], calls: Sequence[Record], reference: Sequence[Record]) -> list[dict]:
    """Findings for the children of the culprit ``row`` that received the error through an argument
    standing for a reference input (a value tensor given as ``(y, y, x)`` where the twin reads
    ``y``) and agree when given the reference's: the culprit passed them another value."""
    out = []
    for child in rows:
        if child.status != "propagated" or not child.reran or not row.match.candidate.contains(child.match.candidate):
            continue
        for key, given, wanted in _stand_ins(child.match.candidate.inputs, child.match.reference.inputs,
                                             _leaf_pairs(child.match.candidate.inputs, child.match.reference.inputs)):
            if not isinstance(given, torch.Tensor) or _bitwise(given, wanted):
                continue
            ours = _source(given, row.match.candidate, calls)
            theirs = _source(wanted, row.match.reference, reference)
            out.append(_finding(row.candidate, "argument", None, key, None, None,
                                f"{row.candidate}: passes {ours} to {child.candidate} as {key}; the reference's "
                                f"{row.reference} passes {theirs} to {child.reference}"))
    return out[:1]


def _source(value: Any, scope: Record, calls: Sequence[Record]) -> str:
    """Which call inside ``scope`` made ``value`` (the latest returning it), or ``scope``'s own input."""
    if _bitwise(scope.first_input, value):
        return f"the input of {scope.name}"
    made = [c for c in calls if c is not scope and scope.contains(c) and _bitwise(c.primary, value)]
    return f"what {max(made, key=lambda c: c.end).name} returns" if made else "a value computed in its own code"


def _failing_after(rows: Sequence[Row], call: Record) -> Row | None:
    """The first failing row paired by evidence whose call starts after ``call`` ended."""
    return next((r for r in rows if not r.passed and r.match.how != "structure"
                 and r.match.candidate.start > call.end), None)


def _left_out_after(wrapper: Record, row: Row | None, calls: Sequence[Record]) -> list[dict]:
    """A finding for a call that returns a nested call's output as it is, where the failing ``row``'s
    twin reads that output plus the call's input: a residual add left out. [] when the values do
    not show it."""
    child = min((c for c in calls if wrapper.contains(c) and _bitwise(c.primary, wrapper.primary)),
                key=lambda c: c.start, default=None)
    if row is None or child is None:
        return []
    given, wanted, out = wrapper.first_input, row.match.reference.first_input, wrapper.primary
    if not all(isinstance(t, torch.Tensor) for t in (given, wanted, out)) or not given.shape == out.shape == wanted.shape \
            or not _holds_any(given + out, [wanted], row.tolerance):
        return []
    text = (f"{wrapper.name}: add missing in the candidate: the reference adds the call's input to what {child.name} "
            f"returns (a residual connection) before {row.match.reference.name} reads it")
    return [_finding(wrapper.name, "missing_op", "add", None, None, None, text)]


def _uncleared(suspects: list[Record], row: Row | None, reference: Sequence[Record],
               disowned: dict[int, Any] | None = None) -> list[Record]:
    """The suspects that did not do their part right, judged against the reference calls inside
    ``row``'s twin (all of them when None) and the values its ops compute. ``disowned``: by id of
    a suspect, a value that does not vouch for it, nor does any other holding that value."""
    # a torch lookup (an ``nn.Embedding``) handed only indices, whose every output row is a row of
    # its table and of a reference tensor, did its part right: which rows to read is its caller's
    # choice (position ids flipped in the caller's code); a row the reference does not hold is a
    # table of its own
    suspects = [u for u in suspects if not _looked_up(u, reference)]
    # a call whose output was kept as statistics alone (summary mode) cannot be told apart from
    # its caller by values: the innermost twinned call around it, whose inputs agree, stays the
    # origin (the q of a split attention is not blamed for a scale its attention applies)
    suspects = [u for u in suspects if not isinstance(u.primary, TensorSummary)]
    if not suspects:
        return suspects
    pool = _pool(row, reference)
    tol = row.tolerance if row is not None else None
    disowned = disowned or {}
    # a call without a twin (or with a wrong guess for one) that computes a value the reference
    # computes too (a permute back to NCHW, a wrapper around twinned layers, the main branch of a
    # block whose shortcut is missing) did its part right: the error is made later, in the outer
    # module's own code
    outputs = [ref for record in pool for ref in record.outputs.values()]
    suspects = [u for u in suspects if not _holds_any(u.primary, _apart(outputs, disowned.get(id(u)), tol), tol)]
    if not suspects:
        return suspects
    # nor one whose value the reference computes without a module call of its own (a fused qkv
    # sliced into q; a bias table read by an attention's own code): its ops run again to see
    inner = _inner_values(row) if row is not None else []
    suspects = [u for u in suspects if not _holds_any(u.primary, _apart(inner, disowned.get(id(u)), tol), tol)]
    # nor one handed a value the reference never computes: the error was made before it was
    # called (an activation child after its norm's own code went wrong, a softmax child after the
    # attention scaled its logits wrongly), by the code around it
    known = _known_values(row, reference)
    return [u for u in suspects if not _received_unknown(u, known, tol)]


def _looked_up(call: Record, reference: Sequence[Record]) -> bool:
    """Whether ``call`` is a torch module (no code of the port's) given integer tensors only, whose
    output rows are each a row of its one 2-D floating table and of one tensor the reference model
    holds: a lookup of what it was handed, in the reference's table."""
    module, out = call.module, call.primary
    if module is None or _own_forward(module) or not isinstance(out, torch.Tensor) or not out.is_floating_point():
        return False
    given = [v for v in call.inputs.values() if isinstance(v, torch.Tensor)]
    tables = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    if not given or any(v.is_floating_point() or v.is_complex() for v in given) or len(tables) != 1 \
            or tables[0].dim() != 2 or out.numel() == 0 or out.shape[-1] != tables[0].shape[1]:
        return False
    width = out.shape[-1]
    rows = {row.tobytes() for row in _rows(out)}
    if not rows <= {row.tobytes() for row in _rows(tables[0].to(out.dtype))}:
        return False
    model = max(reference, key=lambda r: r.end - r.start).module if reference else None
    first = out.detach().reshape(-1, width)[0]
    # a tensor holding the first row is read in full; the others are passed over at once
    held = [] if model is None else [t for t in (*model.parameters(), *model.buffers())
                                     if t.is_floating_point() and t.dim() and t.shape[-1] == width
                                     and bool((t.detach().reshape(-1, width).to(out.dtype) == first.to(t.device)).all(-1).any())]
    return any(rows <= {row.tobytes() for row in _rows(t.to(out.dtype))} for t in held)


def _rows(t: torch.Tensor) -> Any:
    """``t``'s last-axis rows as arrays (compared bitwise by their bytes)."""
    return t.detach().cpu().contiguous().reshape(-1, t.shape[-1]).view(torch.uint8).numpy()  # any dtype, bf16 too


def _pool(row: Row | None, reference: Sequence[Record]) -> list[Record]:
    """The reference calls inside ``row``'s twin (all of them when None)."""
    return list(reference) if row is None else [r for r in reference if r is row.match.reference
                                                or row.match.reference.contains(r)]


def _known_values(row: Row | None, reference: Sequence[Record]) -> list[Any]:
    """Every value the reference computes inside ``row``'s twin: its calls' inputs and outputs,
    and its ops' values (all calls' when None)."""
    inner = _inner_values(row) if row is not None else []
    return [v for r in _pool(row, reference) for v in (*r.inputs.values(), *r.outputs.values())] + inner


def _apart(values: Sequence[Any], disowned: Any, tol: Tolerance | None) -> Sequence[Any]:
    """``values`` without those holding ``disowned``'s values (all of them when it is None)."""
    if disowned is None:
        return values
    return [v for v in values if not _holds_any(v, [disowned], tol)]


def _received_unknown(call: Record, known: Sequence[Any], tol: Tolerance | None) -> bool:
    """Whether ``call``'s first input is a full-mode floating tensor that none of ``known`` holds."""
    first = call.first_input
    return isinstance(first, torch.Tensor) and first.is_floating_point() and first.numel() > 0 \
        and not _holds_any(first, known, tol)


def _hands_on(container: Record, call: Record) -> bool:
    """Whether ``call`` (nested in ``container``) received ``container``'s first tensor input as it
    came: nothing in between changed it, or only a border of zeros was put around it (a "SAME"
    pad before an unpadded conv: the pad its twin does inside)."""
    given, got = container.first_input, call.first_input
    if _bitwise(given, got):
        return True
    pad = _zero_border(got, given) if isinstance(got, torch.Tensor) and isinstance(given, torch.Tensor) else None
    return pad is not None and _bitwise(nn.functional.pad(given, pad), got)


def _guess_received(row: Row, rerun: Sequence[str] | None) -> bool:
    """Whether a failing guess gives its guessed twin's output from that twin's inputs (re-run once;
    the verdict is kept on the row, and whether the re-run ran, in ``guess_reran``). One that cannot
    be re-run (summary mode keeps no arguments) received the error when its inputs, of the shapes of
    its twin's, already differ from them: the error was made before it was called."""
    if row.guess_received is None:
        fails = rerun_fails(row) if _may_rerun(row.match.candidate, row.match.reference, rerun) else None
        cand, ref = row.match.candidate, row.match.reference
        if fails is None and _shaped_alike(cand.inputs, ref.inputs):
            row.guess_received, row.guess_reran = _inputs_state(cand, ref, row.tolerance) == "differ", False
        else:
            row.guess_received, row.guess_reran = fails is False, fails is True
    return row.guess_received


def _shaped_alike(cand: dict[str, Leaf], ref: dict[str, Leaf]) -> bool:
    """Whether two calls' inputs are as many leaves, of the same shapes in order."""
    return bool(cand) and len(cand) == len(ref) and all(
        tuple(a.shape) == tuple(b.shape) for a, b in zip(cand.values(), ref.values()))


def _holds_any(out: Any, values: Sequence[Any], tol: Tolerance | None) -> bool:
    """Whether ``out`` holds, in its layout or another, the values of one of ``values``."""
    if not isinstance(out, torch.Tensor) or out.numel() == 0 or not out.is_floating_point():
        return False
    tol = tol or tolerance_for(out.dtype)
    return any(isinstance(ref, torch.Tensor) and ref.numel() == out.numel() and ref.dtype == out.dtype
               and agreeing_layout(out, ref, tol) is not None for ref in values)


# a twin whose ops are recorded to vouch for untwinned calls inside it: not one holding more
# parameter elements than this (a whole large model)
INNER_ELEMENTS = 2**24


def _inner_values(row: Row) -> list[torch.Tensor]:
    """Every value the reference twin of ``row`` computes inside, op by op, and the parameters its
    ops read as they read them (a slice of a table), from its recorded inputs; [] when it cannot run."""
    from harness.diagnose import record_values  # diagnose re-runs modules; localize only needs this

    ref = row.match.reference
    if ref.module is None or type(ref.module).__name__ == "RecordedModule" \
            or sum(p.numel() for p in ref.module.parameters()) > INNER_ELEMENTS:
        return []
    if row.inner_values is None:
        row.inner_values = record_values(ref.module, ref.args, ref.kwargs)
    return row.inner_values
