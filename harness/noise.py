"""Noise floor: judge a low-precision comparison against the reference's own rounding error.

At float32 or bfloat16 a fixed atol/rtol either hides real bugs in rounding (a LayerNorm eps of
1e-5 instead of 1e-6 moves outputs by ~5e-6 relative, below an rtol of 1e-4) or fails clean pairs.
Instead, as AWS Neuron's equivalence checks and torch's dynamo accuracy checker do, measure what
rounding alone costs:

1. Run the reference once more on the same inputs cast to float64, with float64 copies of its
   floating parameters and buffers swapped in for that run (``torch.func.functional_call``: the
   reference's own tensors are never touched, and no copy of the module tree is made). Each
   aligned call is judged in a forward hook as it completes, against the rows' recorded outputs,
   so nothing of the float64 run is kept but the final outputs: the run costs one float64 forward
   and one cast of the weights, and its memory is that forward's own.
2. Per aligned layer, with ``r64`` the float64 reference's output, ``r`` the reference's and
   ``c`` the candidate's output at the comparison dtype, and ``||.||`` the L2 norm (an RMS error,
   steadier than a maximum)::

       floor = ||r - r64|| / ||r64||         the reference's own rounding error
       error = ||c - r64|| / ||r64||         the candidate's error against the exact result
       ratio = error / max(floor, u)         u: unit roundoff of the dtype (2^-24 for float32)

   The layer passes when ``ratio <= DEFAULT_NOISE_RATIO[dtype]``: a correct candidate rounds
   differently but about as much as the reference, so its error stays within a small multiple
   of the floor; a bug adds an error of its own on top. ``u`` keeps layers that the reference
   computes exactly (floor 0) from failing on the candidate's first rounding. ``c`` is taken in
   the layout the row was measured in (another shape; or, for a row measured through a
   permutation keeping its shape, channels-last against channels-first when C == H == W, that
   permutation; at float64 where the reference narrows, too). A row of another shape that passes
   while its metrics put it further from the reference than ``error + floor`` was measured in
   another layout than the one judged: it is measured again in the one its values agree in.
3. Re-runs (culprit search, see :mod:`harness.localize`) are judged the same way, locally: the
   candidate module and the reference twin, with float64 copies of that module's weights, both
   run on the reference's recorded inputs, so the floor is that module's own rounding, not the
   rounding accumulated upstream.

A reference that computes some of its values in float32 whatever its weights (a position table
built with ``dtype=torch.float32``) keeps that rounding in its float64 run, so the floor misses it;
a failing comparison names those operations (the float64 run records what makes a narrower float
out of none) and points to float64, where such operations are judged against their own rounding
(below).

At float64 the reference may still round: some operations run in float32 whatever the model's
dtype (transformers' RMSNorm casts its input to float32), and no port matches that rounding to
float64 tolerances. When a float64 comparison fails atol/rtol, the reference runs once more with
every operation that would make a narrower float out of float64 ones kept in float64 (a cast
returns its input, ``dtype=torch.float32`` becomes float64): the exact values it rounds. If it has
such operations, each failing output and row is judged against them as above (the threshold that
of the narrowest float made), re-runs too, and passes within it; a note names the operations. This
is part of the float64 verdict whatever ``noise_floor`` says: it only passes what the reference's
own rounding explains (:func:`narrow_verdicts`). A float64 candidate that computes some operations in
float32 (transformers' eager attention) is judged alike where such a comparison fails: the comparison
runs again with those operations kept in float64 in every call of the candidate's modules
(:func:`candidate_narrowing`, :meth:`Narrowing.kept_wide`), and its verdict and culprit stand
(:func:`harness.api._judged_wide`); a 16-bit float there is a loss a port should not make, and keeps
atol/rtol.

When every final output and every judged layer of the candidate is bitwise the reference's,
``error == floor`` on each and every ratio is at most 1: no float64 run can change the verdict,
so none is made (the judgements give ratio 1, error and floor NaN, and a note says so), unless
the threshold asked for is below 1.

The absolute atol/rtol verdict is still computed and reported next to this one
(``compare(..., noise_floor=False)`` makes it the verdict again).

Defaults (``DEFAULT_NOISE_RATIO``): float32 4, bfloat16 8, float16 8. At float32 the candidate
and the reference of the registered ConvNeXt and RoPE-ViT pairs round bitwise alike (ratio 1),
and a written-out LayerNorm + Linear + GELU against the functional calls stays below 1.3; a tanh
GELU, an eps of 1e-5 instead of 1e-6, or a 1e-3 relative weight change are 20x to 1000x the floor.
In 16-bit formats a written-out formula rounds every intermediate while fused kernels accumulate in
float32: the same written-out block reaches a median 1.35, p99 2.0 and, on tensors of a few
elements, above 4 (the property test in ``tests/harness/test_noise.py``), hence 8.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from harness.adapters import Adapter, at_position, find_adapter, kept_rolled_layout, one_position
from harness.checks import check_type, check_value
from harness.metrics import measure, tolerance_for
from harness.trace import ROOT, Record, flatten_tensors, hookable_modules, map_tensors, output_leaves

__all__ = ["BITWISE_NOTE", "DEFAULT_NOISE_RATIO", "UNIT_ROUNDOFF", "Narrowing", "NoiseFloor", "NoiseJudgement",
           "NoiseVerdicts", "candidate_narrowing", "judge", "noise_verdicts", "float64_hint", "ratio_divisor"]

DEFAULT_NOISE_RATIO: dict[str, float] = {"float32": 4.0, "bfloat16": 8.0, "float16": 8.0}
BITWISE_NOTE = ("noise floor: every output and layer is bitwise the reference's, so each error is the reference's own "
                "rounding (ratio at most 1); no float64 run was needed")
UNIT_ROUNDOFF: dict[str, float] = {"float32": 2.0 ** -24, "bfloat16": 2.0 ** -8, "float16": 2.0 ** -11,
                                   "float64": 2.0 ** -53}


@dataclass(frozen=True)
class NoiseJudgement:
    """A candidate tensor's error judged against the reference's own rounding error."""

    # error and floor are NaN when the candidate is bitwise the reference: then error == floor and
    # the ratio is at most 1 (given as 1), with no float64 run to measure them
    error: float  # ||candidate - reference@float64|| / ||reference@float64||
    floor: float  # ||reference - reference@float64|| / ||reference@float64||
    ratio: float  # error / max(floor, unit roundoff)
    threshold: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                for k, v in self.__dict__.items()}


def _rel(a: torch.Tensor, exact: torch.Tensor) -> float:
    a = a.detach().to("cpu", torch.float64)
    b = exact.detach().to("cpu", torch.float64)
    # Two norms decide at once when both are finite: a NaN or an infinity anywhere makes a norm
    # non-finite, so finite norms mean finite elements. isfinite is an elementwise pass several
    # times slower than a norm, so it runs only for the rest (non-finite values, or an overflow).
    scale, diff = float(b.norm()), float((a - b).norm())
    if math.isfinite(scale) and math.isfinite(diff):
        return (0.0 if diff == 0.0 else math.inf) if scale == 0.0 else diff / scale
    finite = torch.isfinite(a) & torch.isfinite(b)
    if not bool(finite.all()):
        # non-finite values must coincide; where they do, they carry no rounding error
        same = (~torch.isfinite(a) & ~torch.isfinite(b)) & ((a == b) | (a.isnan() & b.isnan()))
        if not bool((finite | same).all()):
            return math.inf
        a, b = torch.where(finite, a, 0.0), torch.where(finite, b, 0.0)
    scale = float(b.norm())
    diff = float((a - b).norm())
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale


def ratio_divisor(floor: float, dtype: str) -> float:
    """What a ratio divides the error by: the floor, or the unit roundoff of ``dtype`` where the floor is smaller."""
    return max(floor, UNIT_ROUNDOFF.get(dtype, 2.0 ** -24))


def judge(candidate: torch.Tensor, reference: torch.Tensor, exact: torch.Tensor, dtype: str,
          threshold: float | None = None) -> NoiseJudgement:
    """Judge ``candidate`` against ``exact`` (float64 reference) with ``reference``'s error as the floor."""
    threshold = DEFAULT_NOISE_RATIO.get(dtype, 4.0) if threshold is None else threshold
    if candidate.shape != exact.shape or reference.shape != exact.shape:
        return NoiseJudgement(math.inf, math.nan, math.inf, threshold, False)
    error, floor = _rel(candidate, exact), _rel(reference, exact)
    ratio = error / ratio_divisor(floor, dtype) if math.isfinite(error) else math.inf
    return NoiseJudgement(error, floor, ratio, threshold, ratio <= threshold)


def _pairs(cand: Mapping[str, Any], ref: Mapping[str, Any], exact: Mapping[str, Any]) -> list[tuple]:
    """(candidate, reference, exact) leaves paired as the rows pair them: same keys; else each
    candidate leaf with the next unpaired reference leaf of its shape, else of its element count
    (another layout); exact follows the reference's keys."""
    if cand.keys() == ref.keys():
        return [(cand[k], ref[k], exact.get(k)) for k in cand]
    rest = list(ref.items())
    out = []
    for c in cand.values():
        for fits in (lambda r: tuple(r.shape) == tuple(c.shape), lambda r: r.numel() == c.numel()):
            at = next((i for i, (_, r) in enumerate(rest) if hasattr(r, "shape") and hasattr(c, "shape") and fits(r)), None)
            if at is not None:
                k, r = rest.pop(at)
                out.append((c, r, exact.get(k)))
                break
    return out


def _worst(triples: list[tuple], dtype: str, threshold: float | None, relaid: bool = False,
           layout: Adapter | None = None) -> NoiseJudgement | None:
    """The judgement of the leaf furthest beyond the floor. ``relaid``: a leaf of the reference's
    shape that fails is judged through the shape-keeping permutation that fits it best (NHWC against
    NCHW when C == H == W), for a row whose own measurement took that layout. ``layout``: the one
    the twins keep (:func:`harness.adapters.kept_rolled_layout`), for leaves of other shapes."""
    worst = None
    for c, r, e in triples:
        if not all(isinstance(t, torch.Tensor) for t in (c, r, e)):
            return None  # a summary-mode leaf or a missing twin: no noise verdict
        if not (r.is_floating_point() or r.is_complex()):
            continue  # integer outputs (indices, masks) carry no rounding
        c, r, e = _in_one_layout(c, r, e, layout)
        j = judge(c, r, e, dtype, threshold)
        if relaid and not j.passed and c.shape == r.shape:
            kept = find_adapter(c, r, same_shape=True, remember=False)
            j = judge(kept.apply(c), r, e, dtype, threshold) if kept is not None else j
        if worst is None or j.ratio > worst.ratio or (j.ratio != j.ratio):
            worst = j
    return worst


def _in_one_layout(c: torch.Tensor, r: torch.Tensor, e: torch.Tensor,
                   layout: Adapter | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Twins in other layouts judged in the reference's (``layout`` when given), as the rows are
    measured; twins one of which computes one position of the other's output (a norm on the pooled
    token against one on every token) judged at that position."""
    if c.shape == r.shape:
        return c, r, e
    if c.numel() == r.numel():
        adapter = layout or find_adapter(c, r)
        return (adapter.apply(c) if adapter is not None else c), r, e
    if c.numel() < r.numel() and e.shape == r.shape:
        found = one_position(c, r)
        return (c, *(at_position(t, c.shape, *found) for t in (r, e))) if found is not None else (c, r, e)
    found = one_position(r, c)
    return (at_position(c, r.shape, *found) if found is not None else c), r, e


class NoiseFloor:
    """The float64 reference run and the verdicts it gives (see module docstring).

    ``judged``: per aligned call (``id`` of its match), the judgement made when the float64 twin
    completed; ``outputs``: the float64 run's final outputs. No layer output of the run is kept."""

    def __init__(self, judged: dict[int, NoiseJudgement | None], outputs: dict[str, torch.Tensor],
                 dtype: str, threshold: float | None) -> None:
        self.judged = judged
        # per aligned call, its judgement with failing leaves of one shape permuted back: for rows
        # measured through such a layout (inputs in another layout), as their own verdict was
        self.relaid: dict[int, NoiseJudgement | None] = {}
        self.outputs = outputs
        self.dtype = dtype
        self.threshold = DEFAULT_NOISE_RATIO.get(dtype, 4.0) if threshold is None else threshold
        self.narrow: list[str] = []  # operations the float64 run still computed in a narrower float
        self.narrow_dtypes: set[torch.dtype] = set()  # ... and the narrower floats they made
        self.widened = False  # whether those operations were made to keep float64 (narrow_verdicts)

    @classmethod
    def measure(
        cls,
        reference: nn.Module,
        call: Any,
        dtype: str,
        matches: Sequence[Any] = (),
        *,
        reference_call: Callable[[nn.Module, Any], Any] | None = None,
        reference_outputs: Callable[[Any], Mapping[str, torch.Tensor]] | None = None,
        threshold: float | None = None,
        widen: bool = False,
    ) -> "NoiseFloor":
        """Run ``reference`` with float64 weights on ``call`` (a :class:`harness.Call`) cast to float64,
        judging each of ``matches`` (aligned calls whose reference side is a call of ``reference``)
        as its float64 twin completes.

        ``widen``: the operations that would make a narrower float out of float64 ones (a cast to
        float32, a table built in float32) keep float64 instead, so that the run is exact where
        the reference itself rounds (:func:`narrow_verdicts`).

        Raises whatever the float64 run raises (the caller reports it and keeps the absolute
        tolerances).
        """
        floor = cls({}, {}, dtype, threshold)
        floor.widened = widen
        wanted: dict[str, list[Any]] = {}
        for match in matches:
            fused = _FusedTwin.of(match)
            for key in fused.parts if fused is not None else ():
                wanted.setdefault(key, []).append(fused)
            if fused is None:
                # a twin joined with the call after it (a norm and its activation) ends with that call
                wanted.setdefault(getattr(match.reference.module, "tail_key", match.reference.key), []).append(match)
        run = reference_call or (lambda model, c: c(model))
        exact_call = call.to(torch.float64)
        handles = _judging_hooks(reference, wanted, floor)
        try:
            with torch.no_grad():
                out = _run_float64(reference, lambda model: run(model, exact_call), floor.narrow, widen,
                                   floor.narrow_dtypes)
        finally:
            for handle in handles:
                handle.remove()
        floor.outputs = output_leaves(out, reference_outputs, side="reference")
        for match in matches if floor.narrow or not widen else ():
            if match.reference.name == ROOT:  # its outputs are the ones the final comparison selected
                exact = list(floor.outputs.values())
                floor.judged[id(match)] = floor.judge_live(match, {
                    k: floor.outputs.get(k.split("~")[-1], exact[i] if i < len(exact) else None)
                    for i, k in enumerate(match.reference.outputs)})
        return floor

    # -- verdicts --------------------------------------------------------------------------------
    def judge_outputs(self, final: Sequence[tuple[str, torch.Tensor, torch.Tensor]]) -> dict[str, NoiseJudgement]:
        """Final outputs (key, candidate, reference) -> judgement (keys missing when not comparable)."""
        exact = list(self.outputs.values())
        out = {}
        for i, (key, c, r) in enumerate(final):
            e = self.outputs.get(key.split("~")[-1], exact[i] if i < len(exact) else None)
            j = _worst([(c, r, e)], self.dtype, self.threshold)
            if j is not None:
                out[key] = j
        return out

    def judge_match(self, match: Any) -> NoiseJudgement | None:
        """The worst leaf of an aligned call against its float64 twin's output, or None (no twin run,
        or not judged: a summary leaf, a fused record)."""
        return self.judged.get(id(match))

    def judge_match_relaid(self, match: Any) -> NoiseJudgement | None:
        """:meth:`judge_match` with failing same-shape leaves judged in the layout that fits them."""
        return self.relaid.get(id(match), self.judge_match(match))

    def judge_live(self, match: Any, exact: Mapping[str, torch.Tensor]) -> NoiseJudgement | None:
        """Judge ``match`` against ``exact``, its float64 twin's output leaves (and, where that
        fails, in the layout of :meth:`judge_match_relaid`)."""
        pairs = _pairs(match.candidate.outputs, match.reference.outputs, exact)
        judged = _worst(pairs, self.dtype, self.threshold, layout=_kept_layout(match))
        if judged is not None and not judged.passed:
            self.relaid[id(match)] = _worst(pairs, self.dtype, self.threshold, relaid=True)
        return judged

    def rerun_judge(self, match: Any) -> Callable[[Mapping[str, torch.Tensor]], bool | None] | None:
        """For the culprit search: ``outputs of the candidate re-run -> still fails?`` (None: no verdict)."""
        ref = match.reference
        if ref.module is None:
            return None

        def still_fails(outputs: Mapping[str, torch.Tensor]) -> bool | None:
            local = _local_exact(ref, self.widened)
            if local is None:
                return None
            j = _worst(_pairs(dict(outputs), ref.outputs, local), self.dtype, self.threshold, layout=_kept_layout(match))
            if self.widened and j is not None and not j.passed:
                return None  # beyond the narrow operations' rounding: atol/rtol decide, as for the row
            return None if j is None else not j.passed

        return still_fails


def _kept_layout(match: Any) -> Adapter | None:
    """The layout ``match``'s twins keep from their inputs to their outputs, judged as their row was
    measured (within the tolerance of their dtype)."""
    first = match.candidate.first_input
    return kept_rolled_layout(match, tolerance_for(first.dtype)) if isinstance(first, torch.Tensor) \
        and first.is_floating_point() else None


def _float64_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s parameters and buffers by name as ``functional_call`` swaps them in for a float64
    run: floating ones cast to float64 (complex to complex128), buffers always copies, so that a
    forward updating a buffer in place (a train-mode BatchNorm) leaves the module's own alone."""
    state: dict[str, torch.Tensor] = {}
    for kind, named in (("parameter", module.named_parameters()), ("buffer", module.named_buffers())):
        for name, t in named:
            t = t.detach()
            wide = torch.float64 if t.is_floating_point() else torch.complex128 if t.is_complex() else t.dtype
            state[name] = t.to(wide, copy=kind == "buffer")
    return state


class _Bound(nn.Module):
    """``run(model)`` as a forward, so that ``functional_call`` swaps ``model``'s tensors for it."""

    def __init__(self, model: nn.Module, run: Callable[[nn.Module], Any]) -> None:
        super().__init__()
        self.model = model
        self.run = run

    def forward(self) -> Any:
        return self.run(self.model)


def _run_float64(model: nn.Module, run: Callable[[nn.Module], Any], narrow: list[str] | None = None,
                 widen: bool = False, dtypes: set | None = None, where: "_Where | None" = None) -> Any:
    """``run(model)`` with float64 copies of ``model``'s weights swapped in for the run only;
    ``narrow`` collects the operations that still returned a narrower float (a table built in float32),
    ``dtypes`` the floats they made; ``widen``: those operations keep float64 instead (:class:`_WidenOps`);
    ``where``: the module calls open, whose names each such operation is recorded with."""
    state = {f"model.{k}": v for k, v in _float64_state(model).items()}
    found, made = (narrow if narrow is not None else []), (dtypes if dtypes is not None else set())
    mode = _WidenOps(found, made, where) if widen else _NarrowOps(found, made, where) if narrow is not None \
        else contextlib.nullcontext()
    with mode:
        return torch.func.functional_call(_Bound(model, run), state, ())


_NARROW = (torch.float32, torch.float16, torch.bfloat16)


class _Where:
    """The module calls of one model open while it runs, innermost last (kept by :func:`_scope_hooks`),
    and, per operation that made a narrower float, the modules whose calls ran it."""

    def __init__(self) -> None:
        self.open: list[str] = []
        self.modules: dict[str, list[str]] = {}

    def add(self, op: str) -> None:
        names = self.modules.setdefault(op, [])
        if self.open and self.open[-1] not in names:
            names.append(self.open[-1])


class _NarrowOps(TorchFunctionMode):
    """Names the torch functions that make a floating tensor narrower than float64 out of no narrow
    one (``arange(dtype=torch.float32)``, a cast); those computing on narrow inputs only follow them.
    ``where``: records the module each ran in."""

    def __init__(self, found: list[str], dtypes: set | None = None, where: _Where | None = None) -> None:
        super().__init__()
        self.found = found
        self.dtypes = dtypes if dtypes is not None else set()
        self.where = where

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self._narrowing(func, args, kwargs, out)
        return out

    def _narrowing(self, func: Any, args: tuple, kwargs: dict, out: Any) -> str | None:
        """The name of ``func`` if its result ``out`` is a narrow float made of no narrow one (then
        recorded), else None."""
        made = (out,) if isinstance(out, torch.Tensor) else flatten_tensors(out).values()
        # the common case, a float64 result, costs one dtype check; only a narrow one reads the inputs
        if not any(t.dtype in _NARROW for t in made) or any(
                t.dtype in _NARROW for t in flatten_tensors((args, kwargs)).values()):
            return None
        name = getattr(func, "__name__", None) or str(func)
        if name not in self.found:
            self.found.append(name)
        self.dtypes.update(t.dtype for t in made if t.dtype in _NARROW)
        if self.where is not None:
            self.where.add(name)
        return name


# methods that only convert a tensor: kept in float64, they return their input's values unchanged
_CASTS = frozenset({"to", "float", "half", "bfloat16", "type", "type_as"})


class _WidenOps(_NarrowOps):
    """As :class:`_NarrowOps`, and each such operation keeps float64 instead: a cast returns its
    input's values, a function given ``dtype=`` a narrow float is run with float64. What the
    reference computes downstream of them is then exact where it rounded to a narrower float.
    ``inside``: only while a module call of the model ``where`` follows is open (its re-runs among
    the other model's)."""

    def __init__(self, found: list[str], dtypes: set | None = None, where: _Where | None = None,
                 inside: bool = False) -> None:
        super().__init__(found, dtypes, where)
        self.inside = inside

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.inside and not self.where.open:
            return out
        name = self._narrowing(func, args, kwargs, out)
        if name is None:
            return out
        if kwargs.get("dtype") in _NARROW:
            return func(*args, **{**kwargs, "dtype": torch.float64})
        source = args[0] if args else None
        if name in _CASTS and isinstance(out, torch.Tensor) and isinstance(source, torch.Tensor) \
                and source.dtype == torch.float64:
            return source.to(out.device, copy=True)  # a copy, as the cast made one: writes into it stay there
        return out


@dataclass
class _FusedTwin:
    """A match whose reference record stands for several calls or a slice of one
    (:func:`harness.align.fused_records`): the float64 outputs of those calls, gathered as they
    complete and fused as the record was, are its float64 twin."""

    match: Any
    parts: tuple[str, ...]  # the record keys of the calls it stands for
    cut: tuple[int, int] | None  # a slice: its start and stop; None: the parts concatenated
    got: dict

    @classmethod
    def of(cls, match: Any) -> "_FusedTwin | None":
        ref = match.reference
        if ref.module is not None or not isinstance(ref.primary, torch.Tensor):
            return None
        sliced = re.fullmatch(r"(.+)\[(\d+):(\d+)\]", ref.name)
        if sliced:
            return cls(match, (f"{sliced[1]}#{ref.call}",), (int(sliced[2]), int(sliced[3])), {})
        return cls(match, tuple(f"{n}#{ref.call}" for n in ref.name.split("+")), None, {}) if "+" in ref.name else None

    def take(self, key: str, exact: Mapping[str, torch.Tensor], floor: "NoiseFloor") -> None:
        self.got[key] = next(iter(exact.values()), None)
        if len(self.got) < len(self.parts) or any(t is None for t in self.got.values()):
            return
        fused = self._fused([self.got[k] for k in self.parts], self.match.reference.primary)
        if fused is not None:
            floor.judged[id(self.match)] = floor.judge_live(self.match, {next(iter(self.match.reference.outputs)): fused})

    def _fused(self, parts: list[torch.Tensor], recorded: torch.Tensor) -> torch.Tensor | None:
        if self.cut is None:
            from harness.align import _fuse  # the one definition of how a record fuses its parts

            return _fuse(parts, "concat", None)
        (whole,) = parts
        if whole.ndim != recorded.ndim:
            return None
        dim = next((d for d in range(whole.ndim) if whole.shape[d] != recorded.shape[d]), None)
        return None if dim is None else whole.narrow(dim, self.cut[0], self.cut[1] - self.cut[0])


def _judging_hooks(model: nn.Module, wanted: Mapping[str, list[Any]], floor: NoiseFloor) -> list[Any]:
    """Forward hooks on the modules that ``wanted`` (record key -> matches) names; each call of one
    is keyed as the tracer keys it (``name#call``) and its matches are judged on its live output."""
    names = {key.rpartition("#")[0] for key in wanted}
    calls: dict[str, int] = {}
    open_calls: dict[str, list[int]] = {}
    handles = []

    def pre(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            calls[name] = calls.get(name, 0) + 1
            open_calls.setdefault(name, []).append(calls[name] - 1)
        return hook

    def post(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            stack = open_calls.get(name)
            if not stack:
                return
            key = f"{name}#{stack.pop()}"
            # a widened run that has narrowed nothing yet computes exactly what was recorded: a
            # floor of zero explains no failure, and judging it would cost a pass over every output
            matches = wanted.get(key, ()) if floor.narrow or not floor.widened else ()
            exact = {k: v.detach() for k, v in flatten_tensors(output).items()} if matches else {}
            for match in matches:
                if isinstance(match, _FusedTwin):
                    match.take(key, exact, floor)
                else:
                    floor.judged[id(match)] = floor.judge_live(match, exact)
        return hook

    try:
        for name, module in hookable_modules(model):
            name = name or ROOT
            if name in names:
                handles.append(module.register_forward_pre_hook(pre(name)))
                handles.append(module.register_forward_hook(post(name)))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return handles


def _scope_hooks(model: nn.Module, where: _Where) -> list[Any]:
    """Forward hooks keeping ``where.open`` the names of ``model``'s module calls open (the end of a
    failing call too)."""
    def opened(name: str) -> Callable[..., None]:
        return lambda module, args: where.open.append(name)

    def closed(module: nn.Module, args: tuple, output: Any) -> None:
        if where.open:
            where.open.pop()

    handles = []
    try:
        for name, module in hookable_modules(model):
            handles.append(module.register_forward_pre_hook(opened(name or ROOT)))
            handles.append(module.register_forward_hook(closed, always_call=True))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return handles


@dataclass
class Narrowing:
    """A float64 model's operations that compute in float32 whatever its dtype (a softmax given
    ``dtype=torch.float32``: transformers' eager attention), found by :func:`candidate_narrowing`."""

    model: nn.Module
    ops: list[str]  # the operations, by name
    modules: dict[str, list[str]]  # per operation, the modules whose calls ran it

    def named(self) -> str:
        """The operations and the modules they ran in, in words (``softmax in attn.0, attn.1``)."""
        def one(op: str) -> str:
            where = self.modules.get(op) or []
            shown = ", ".join(where[:4]) + (", ..." if len(where) > 4 else "")
            return f"{op} in {shown}" if where else op

        return "; ".join(one(op) for op in self.ops[:5]) + ("; ..." if len(self.ops) > 5 else "")

    @contextlib.contextmanager
    def kept_wide(self) -> Any:
        """Within it, each call of a module of the model (its forward, a re-run of one of its modules
        on the other side's inputs) keeps those operations in float64; nothing else changes."""
        where = _Where()
        mine = {id(m) for m in self.model.modules()}

        def opened(module: nn.Module, args: tuple) -> None:
            if id(module) in mine:
                where.open.append("")

        def closed(module: nn.Module, args: tuple, output: Any) -> None:
            if id(module) in mine and where.open:
                where.open.pop()

        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        handles = [register_module_forward_pre_hook(opened), register_module_forward_hook(closed, always_call=True)]
        try:
            with _WidenOps([], set(), where, inside=True):
                yield
        finally:
            for handle in handles:
                handle.remove()


def candidate_narrowing(candidate: nn.Module, call: Any, candidate_call: Callable | None = None) -> Narrowing | None:
    """The operations a float64 ``candidate`` computes in float32 whatever its dtype, found in one run
    of it as :func:`narrow_verdicts` finds the reference's, with the modules that ran them. None
    where it narrows nothing, makes a 16-bit float (rounding a port should not add inside a float64
    model), or cannot run so."""
    seen = _NARROWS_NOTHING.setdefault(candidate, set())
    signature = _run_signature(candidate, call, candidate_call)
    if signature in seen:
        return None
    run = candidate_call or (lambda model, c: c(model))
    # a copy: a candidate may write into its input (an in-place ReLU), and the caller's must stay as it is
    exact_call, found, made, where = call.clone().to(torch.float64), [], set(), _Where()
    handles = _scope_hooks(candidate, where)
    try:
        with torch.no_grad():
            _run_float64(candidate, lambda model: run(model, exact_call), found, True, made, where)
    except Exception:  # a candidate that cannot run so: atol/rtol decide
        return None
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        seen.add(signature)
        return None
    return Narrowing(candidate, found, where.modules) if made == {torch.float32} else None


def _local_exact(ref: Record, widen: bool = False) -> dict[str, torch.Tensor] | None:
    """The output of ``ref``'s module with float64 weights on ``ref``'s recorded inputs cast to float64
    (``widen``: its narrowing operations kept in float64, see :class:`_WidenOps`)."""
    to64 = (lambda t: t.to(torch.float64) if t.is_floating_point() else t.clone())
    args, kwargs = map_tensors(ref.args, to64), map_tensors(ref.kwargs, to64)
    try:
        with torch.no_grad():
            out = _run_float64(ref.module, lambda module: module(*args, **kwargs), widen=widen)
    except Exception:  # a signature or dtype the float64 run cannot take: no local verdict
        return None
    return {k: v.detach() for k, v in flatten_tensors(out).items()}


@dataclass
class NoiseVerdicts:
    """What the noise floor decided for one comparison (``enabled`` False: absolute tolerances only)."""

    enabled: bool
    threshold: float | None = None
    outputs: dict[str, NoiseJudgement] | None = None
    note: str | None = None
    seconds: float = 0.0

    @property
    def outputs_passed(self) -> bool | None:
        """Whether every final output is within the noise threshold (None: no noise verdict)."""
        if not self.enabled or not self.outputs:
            return None
        return all(j.passed for j in self.outputs.values())

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "threshold": self.threshold,
                "outputs": {k: j.to_dict() for k, j in (self.outputs or {}).items()},
                "note": self.note, "seconds": round(self.seconds, 4)}


def check_noise_floor(option: bool | float | None) -> float | None:
    """The ratio threshold ``option`` sets (None: none set); a TypeError/ValueError for an option that is none of
    None, True, False or a positive number."""
    check_type("noise_floor", option, (bool, int, float, type(None)),
               what="None (automatic), True, False or a ratio threshold")
    if option is None or isinstance(option, bool):
        return None
    check_value("noise_floor ratio threshold", option, option > 0 and math.isfinite(option),
                expected="a positive number")
    return float(option)


def noise_verdicts(
    option: bool | float | None,
    dtype: str,
    rows: Sequence[Any],
    final: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
    *,
    reference: nn.Module | None,
    call: Any,
    mode: str,
    reference_call: Callable | None = None,
    reference_outputs: Callable | None = None,
    random_reference: bool = False,
    tolerance: Any = None,
) -> NoiseVerdicts:
    """Measure the noise floor and make it the verdict of every row it can judge.

    At float64, with ``tolerance`` (the comparison's :class:`harness.metrics.Tolerance`), what
    fails it is judged against the reference's own narrower operations instead when it has some
    (:func:`narrow_verdicts`), whatever ``option`` says.

    ``option``: ``None`` (default) on for float32/bfloat16/float16 comparisons of a live reference
    (in summary mode for the final outputs only: the layers keep statistics), off otherwise; ``True``/``False`` force it; a number turns it on with that ratio
    threshold. Each judged row keeps its absolute-tolerance verdict in ``row.passed_tolerance``
    (the report shows both); ``row.noise`` holds the :class:`NoiseJudgement`.
    ``random_reference``: the reference's traced forward drew random numbers, so no float64 run
    of it measures rounding alone; the floor is off, and a note says why.
    """
    threshold = check_noise_floor(option)
    if dtype == "float64" and tolerance is not None and reference is not None and not random_reference:
        narrow = narrow_verdicts(rows, final, reference=reference, call=call, tolerance=tolerance,
                                 reference_call=reference_call, reference_outputs=reference_outputs, threshold=threshold)
        if narrow is not None:
            return narrow
    wanted = option is not False and (option is not None or dtype in DEFAULT_NOISE_RATIO)
    if not wanted:
        return NoiseVerdicts(False)
    # summary mode keeps the final outputs whole: the floor judges those (its layers keep statistics only)
    why_not = ("the comparison runs at float64: no rounding floor to measure" if dtype == "float64"
               else "the reference is a recorded trace, not a module" if reference is None else None)
    if why_not:
        return NoiseVerdicts(False, note=f"noise floor off: {why_not}" if option else None)
    if random_reference:
        return NoiseVerdicts(False, note="noise floor off: the reference drew random numbers in its forward (Dropout "
                                         "in train mode, sampling), so a float64 run of it differs by more than "
                                         "rounding; absolute tolerances decide")
    started = time.perf_counter()
    limit = DEFAULT_NOISE_RATIO.get(dtype, 4.0) if threshold is None else threshold
    if limit >= 1 and _bitwise_alike(rows, final):
        # error == floor exactly, so every ratio is at most 1: no float64 run can change the verdict
        same = NoiseJudgement(math.nan, math.nan, 1.0, limit, True)
        for row in rows:
            if _judgeable(row.match):
                row.noise, row.passed_tolerance = same, row.passed
        return NoiseVerdicts(True, limit, {key: same for key, _, _ in final}, note=BITWISE_NOTE,
                             seconds=time.perf_counter() - started)
    need, room = _floor_bytes(reference, rows), _room(reference)
    if option is None and room is not None and need > room:
        return NoiseVerdicts(False, note=f"noise floor off: a float64 run of the reference needs about "
                                         f"{need / 2**30:.2f} GiB, {room / 2**30:.2f} GiB are free; noise_floor=True "
                                         f"forces it")
    try:
        floor = NoiseFloor.measure(reference, call, dtype, [row.match for row in rows], reference_call=reference_call,
                                   reference_outputs=reference_outputs, threshold=threshold)
    except Exception as exc:  # a reference that cannot run at float64
        return NoiseVerdicts(False, note=f"noise floor off: the float64 run of the reference failed "
                                         f"({type(exc).__name__}: {exc}); absolute tolerances decide")
    for row in rows:
        # a row measured through a permutation keeping its shape is judged in that layout too
        judged = floor.judge_match_relaid(row.match) if _same_shape_layout(row) else floor.judge_match(row.match)
        if judged is None:
            continue
        row.noise, row.passed_tolerance = judged, row.passed
        row.passed = judged.passed
        row.rerun_judge = floor.rerun_judge(row.match)
        _shown_as_judged(row)
    outputs = floor.judge_outputs(final)
    failing = any(not j.passed for j in outputs.values()) or any(row.noise is not None and not row.passed for row in rows)
    note = None
    if failing and floor.narrow:  # the floor itself kept that rounding: a candidate exact there looks worse
        note = (f"noise floor: the reference's float64 run still computed in lower precision "
                f"({', '.join(floor.narrow[:5])}{', ...' if len(floor.narrow) > 5 else ''}), so its floor there is not "
                f"its rounding alone; a failure near those operations is best checked at float64")
    if mode != "full":
        note = " ".join(filter(None, [note, "noise floor: summary mode keeps the final outputs whole, and only they are "
                                            "judged against the reference's rounding; layers by absolute tolerances"]))
    return NoiseVerdicts(True, floor.threshold, outputs, note=note, seconds=time.perf_counter() - started)


def narrow_verdicts(
    rows: Sequence[Any],
    final: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
    *,
    reference: nn.Module,
    call: Any,
    tolerance: Any,
    reference_call: Callable | None = None,
    reference_outputs: Callable | None = None,
    threshold: float | None = None,
) -> NoiseVerdicts | None:
    """A float64 comparison whose reference computes some operations in a narrower float (transformers'
    RMSNorm casts to float32 inside a float64 model): what fails atol/rtol there is judged against
    that rounding, as a float32 comparison is against the reference's own.

    Only when some final output or confirmed row fails ``tolerance``: the reference runs once more
    with those operations kept in float64 (:class:`_WidenOps`), the exact result it rounds. Each
    failing output and row is then judged as the noise floor judges (error and floor against that
    run; the threshold that of the narrowest float found) and passes if within it; its re-runs are
    judged so too, locally. What passes atol/rtol stays as it is. None when nothing fails, the
    reference narrows nothing, or the run fails (atol/rtol decide)."""
    failing_rows = [row for row in rows if not row.passed and row.match.how != "structure"
                    and (_judgeable(row.match) or _FusedTwin.of(row.match) is not None)]
    failing_outputs = [(k, c, r) for k, c, r in final if not measure(c, r).passes(tolerance)]
    if not (failing_rows or failing_outputs):
        return None
    started = time.perf_counter()
    seen = _NARROWS_NOTHING.setdefault(reference, set())
    signature = _run_signature(reference, call, reference_call)
    if signature in seen:
        return None
    try:
        floor = NoiseFloor.measure(reference, call, "float64", [row.match for row in failing_rows],
                                   reference_call=reference_call, reference_outputs=reference_outputs,
                                   threshold=threshold, widen=True)
    except Exception:  # a reference that cannot run so: atol/rtol decide
        return None
    if not floor.narrow:
        seen.add(signature)
        return None
    narrowest = [d for d in ("bfloat16", "float16", "float32") if getattr(torch, d) in floor.narrow_dtypes] or ["float32"]
    floor.threshold = DEFAULT_NOISE_RATIO[narrowest[0]] if threshold is None else threshold
    floor.judged = {k: (None if j is None else _with_threshold(j, floor.threshold)) for k, j in floor.judged.items()}
    for row in failing_rows:
        judged = floor.judge_match_relaid(row.match) if _same_shape_layout(row) else floor.judge_match(row.match)
        if judged is not None:
            row.noise, row.passed_tolerance, row.passed = judged, False, judged.passed
            row.rerun_judge = floor.rerun_judge(row.match)
            _shown_as_judged(row)
    failing = {k for k, _, _ in failing_outputs}
    outputs = {k: _with_threshold(j, floor.threshold, passed=None if k in failing else True)
               for k, j in floor.judge_outputs(final).items()}
    shown = ", ".join(floor.narrow[:5]) + (", ..." if len(floor.narrow) > 5 else "")
    note = (f"the reference computes some operations in {narrowest[0]} inside this float64 run ({shown}): what fails "
            f"atol/rtol was judged against that rounding instead (error and floor against a run of the reference with "
            f"those operations kept in float64; threshold {floor.threshold:g}x the floor)")
    return NoiseVerdicts(True, floor.threshold, outputs, note=note, seconds=time.perf_counter() - started)


# references whose float64 run made no narrower float, by run signature (_run_signature): a map's
# verification compares one reference again and again, and most narrow nothing
_NARROWS_NOTHING: "weakref.WeakKeyDictionary[nn.Module, set]" = weakref.WeakKeyDictionary()


def _run_signature(reference: nn.Module, call: Any, reference_call: Callable | None) -> tuple:
    """What decides which operations a run of ``reference`` makes: how it is called, the shapes and
    dtypes it is given, its mode, and its modules' classes and any forward replaced on an instance."""
    given = tuple((k, tuple(t.shape), t.dtype) for k, t in flatten_tensors((call.args, call.kwargs)).items())
    code = tuple((type(m), id(m.__dict__.get("forward")), m.training) for m in reference.modules())
    return reference_call, given, code


def _shown_as_judged(row: Any) -> None:
    """A row of another shape passed by its judgement, whose metrics say its tensors are further
    apart than the judgement allows, was measured in another layout than the one judged (chosen
    unmeasured where rounding moved the extremes): it is measured again in the layout its values
    agree in. In one layout ``||c - r|| <= ||c - r64|| + ||r - r64||``, so its relative error is at
    most about ``error + floor``."""
    j = row.noise
    if not row.passed or row.reference_shape is None or row.metrics.rel_l2 <= 2 * (j.error + j.floor):
        return
    from harness.localize import remeasured_by_values  # localize measures rows; the floor only judges them

    remeasured_by_values(row)


def _same_shape_layout(row: Any) -> bool:
    """Whether ``row`` was measured through a layout keeping its shape (NHWC against NCHW when C == H == W)."""
    return row.adapter is not None and row.reference_shape is None


def _with_threshold(j: NoiseJudgement, threshold: float, passed: bool | None = None) -> NoiseJudgement:
    return NoiseJudgement(j.error, j.floor, j.ratio, threshold, j.ratio <= threshold if passed is None else passed)


def _judgeable(match: Any) -> bool:
    """Whether the floor judges ``match``: its reference side is a call of the reference (not a
    record fused from several) with a floating output."""
    leaves = list(match.reference.outputs.values())
    return match.reference.module is not None and all(isinstance(t, torch.Tensor) for t in leaves) \
        and any(t.is_floating_point() or t.is_complex() for t in leaves)


def _bitwise_alike(rows: Sequence[Any], final: Sequence[tuple[str, torch.Tensor, torch.Tensor]]) -> bool:
    """Whether every final output and every judged row's output is bitwise the reference's (same
    leaves, shapes, dtypes and values; a NaN is never equal)."""
    def same(a: Any, b: Any) -> bool:
        if a is b:  # one copy kept for both traces (harness.trace: they agreed bitwise then)
            return True
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and bool(torch.equal(a, b))

    if not all(same(c, r) for _, c, r in final):
        return False
    for row in rows:
        cand, ref = row.match.candidate.outputs, row.match.reference.outputs
        if _judgeable(row.match) and not (cand.keys() == ref.keys() and all(same(cand[k], ref[k]) for k in ref)):
            return False
    return True


def _floor_bytes(reference: nn.Module, rows: Sequence[Any]) -> int:
    """Float64 bytes of the float64 run: the reference's floating tensors, plus twice its largest
    aligned output (a forward holds at least one call's input and output at once; no layer output
    of the run is kept beyond its call)."""
    weights = sum(t.numel() for t in (*reference.parameters(), *reference.buffers()) if t.is_floating_point())
    largest = max((leaf.numel() for row in rows for leaf in row.match.reference.outputs.values()
                   if isinstance(leaf, torch.Tensor)), default=0)
    return 8 * (weights + 2 * largest)


def _room(reference: nn.Module) -> int | None:
    from harness.memory import HEADROOM, available_bytes

    device = next((t.device for t in reference.parameters()), torch.device("cpu"))
    free = available_bytes(device)
    return None if free is None else int(HEADROOM * free)


def float64_hint(pair: str | None, dtype: str, passed: bool, culprit: str | None, rows: Sequence[Any]) -> list[str]:
    """For a failing low-precision run: would float64 localize it better? (a note with the command)."""
    if passed or dtype == "float64":
        return []
    command = f"python -m harness compare {pair} --dtype float64" if pair else "compare(..., dtype=torch.float64)"
    if culprit is None:
        return [f"not localized at {dtype}; float64 takes rounding out of every comparison and may: {command}"]
    row = next((r for r in rows if r.candidate == culprit and getattr(r, "noise", None) is not None), None)
    if row is None:
        return [f"{culprit} was judged by atol/rtol alone; float64 separates errors from rounding sharply: {command}"]
    ratio = row.noise.ratio
    if ratio < 10 * row.noise.threshold:
        return [f"{culprit} is only {ratio:.3g}x its {dtype} rounding floor: float64 would localize it more "
                f"sharply: {command}"]
    return [f"{culprit} is {ratio:.3g}x its {dtype} rounding floor: float64 would name the same culprit ({command})"]
