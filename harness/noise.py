"""Noise floor: judge a low-precision comparison against the reference's own rounding error.

At float32 or bfloat16 a fixed atol/rtol either hides real bugs in rounding (a LayerNorm eps of
1e-5 instead of 1e-6 moves outputs by ~5e-6 relative, below an rtol of 1e-4) or fails clean pairs.
Instead, as AWS Neuron's equivalence checks and torch's dynamo accuracy checker do, measure what
rounding alone costs:

1. Copy the reference and cast the copy to float64 (``copy.deepcopy(reference).double()``; the
   reference itself is never touched), run it on the same inputs cast to float64, under tracing.
2. Per aligned layer, with ``r64`` the float64 reference's output, ``r`` the reference's and
   ``c`` the candidate's output at the comparison dtype, and ``||.||`` the L2 norm (an RMS error,
   steadier than a maximum)::

       floor = ||r - r64|| / ||r64||         the reference's own rounding error
       error = ||c - r64|| / ||r64||         the candidate's error against the exact result
       ratio = error / max(floor, u)         u: unit roundoff of the dtype (2^-24 for float32)

   The layer passes when ``ratio <= DEFAULT_NOISE_RATIO[dtype]``: a correct candidate rounds
   differently but about as much as the reference, so its error stays within a small multiple
   of the floor; a bug adds an error of its own on top. ``u`` keeps layers that the reference
   computes exactly (floor 0) from failing on the candidate's first rounding.
3. Re-runs (culprit search, see :mod:`harness.localize`) are judged the same way, locally: the
   candidate module and the float64 reference twin both run on the reference's recorded inputs,
   so the floor is that module's own rounding, not the rounding accumulated upstream.

The absolute atol/rtol verdict is still computed and reported next to this one
(``compare(..., noise_floor=False)`` makes it the verdict again).

Defaults (``DEFAULT_NOISE_RATIO``): float32 4, bfloat16 8, float16 8. At float32 the candidate
and the reference of the registered ConvNeXt and RoPE-ViT pairs round bitwise alike (ratio 1),
and a written-out LayerNorm + Linear + GELU against the functional calls stays below 1.3; a tanh
GELU, an eps of 1e-5 instead of 1e-6, or a 1e-3 relative weight change are 20x to 1000x the floor.
In 16-bit formats a written-out formula rounds every intermediate while fused kernels accumulate in
float32: the same written-out block reaches a median 1.35, p99 2.0 and, on tensors of a few
elements, above 4 (the property test in ``tests/harness/test_noise_floor.py``), hence 8.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from harness.adapters import find_adapter
from harness.diagnose import has_instance_forward
from harness.trace import Record, Tracer, flatten_tensors, map_tensors

__all__ = ["DEFAULT_NOISE_RATIO", "UNIT_ROUNDOFF", "NoiseFloor", "NoiseJudgement", "NoiseVerdicts", "judge",
           "noise_verdicts", "float64_hint"]

DEFAULT_NOISE_RATIO: dict[str, float] = {"float32": 4.0, "bfloat16": 8.0, "float16": 8.0}
UNIT_ROUNDOFF: dict[str, float] = {"float32": 2.0 ** -24, "bfloat16": 2.0 ** -8, "float16": 2.0 ** -11,
                                   "float64": 2.0 ** -53}


@dataclass(frozen=True)
class NoiseJudgement:
    """A candidate tensor's error judged against the reference's own rounding error."""

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


def judge(candidate: torch.Tensor, reference: torch.Tensor, exact: torch.Tensor, dtype: str,
          threshold: float | None = None) -> NoiseJudgement:
    """Judge ``candidate`` against ``exact`` (float64 reference) with ``reference``'s error as the floor."""
    threshold = DEFAULT_NOISE_RATIO.get(dtype, 4.0) if threshold is None else threshold
    if candidate.shape != exact.shape or reference.shape != exact.shape:
        return NoiseJudgement(math.inf, math.nan, math.inf, threshold, False)
    error, floor = _rel(candidate, exact), _rel(reference, exact)
    u = UNIT_ROUNDOFF.get(dtype, 2.0 ** -24)
    ratio = error / max(floor, u) if math.isfinite(error) else math.inf
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


def _worst(triples: list[tuple], dtype: str, threshold: float | None) -> NoiseJudgement | None:
    worst = None
    for c, r, e in triples:
        if not all(isinstance(t, torch.Tensor) for t in (c, r, e)):
            return None  # a summary-mode leaf or a missing twin: no noise verdict
        if not (r.is_floating_point() or r.is_complex()):
            continue  # integer outputs (indices, masks) carry no rounding
        if c.shape != r.shape:  # twins in other layouts: judged in the reference's, as the rows are
            adapter = find_adapter(c, r)
            c = adapter.apply(c) if adapter is not None else c
        j = judge(c, r, e, dtype, threshold)
        if worst is None or j.ratio > worst.ratio or (j.ratio != j.ratio):
            worst = j
    return worst


class NoiseFloor:
    """The float64 reference run, traced, and the verdicts it gives (see module docstring)."""

    def __init__(self, exact: nn.Module, records: dict[str, Record], outputs: dict[str, torch.Tensor],
                 dtype: str, threshold: float | None) -> None:
        self.exact = exact
        self.records = records
        self.outputs = outputs
        self.dtype = dtype
        self.threshold = DEFAULT_NOISE_RATIO.get(dtype, 4.0) if threshold is None else threshold

    @classmethod
    def measure(
        cls,
        reference: nn.Module,
        call: Any,
        dtype: str,
        *,
        reference_call: Callable[[nn.Module, Any], Any] | None = None,
        reference_outputs: Callable[[Any], Mapping[str, torch.Tensor]] | None = None,
        include: str | None = None,
        threshold: float | None = None,
    ) -> "NoiseFloor":
        """Copy ``reference`` to float64 and trace it on ``call`` (a :class:`harness.Call`) cast to float64.

        Raises whatever the copy or the float64 run raises (the caller reports it and keeps the
        absolute tolerances).
        """
        if has_instance_forward(reference):
            raise ValueError("a submodule's forward is patched on the instance; a copy would run the original")
        exact = copy.deepcopy(reference).to(torch.float64)
        exact_call = call.to(torch.float64)
        # outputs only: re-runs take their inputs from the reference's own trace
        with torch.no_grad(), Tracer(exact, include=include, mode="full", record_inputs=False) as trace:
            out = reference_call(exact, exact_call) if reference_call else exact_call(exact)
        outputs = dict(reference_outputs(out)) if reference_outputs else flatten_tensors(out)
        return cls(exact, trace.by_key(), outputs, dtype, threshold)

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
        """The worst leaf of an aligned call against the float64 twin's recorded output, or None."""
        twin = self.records.get(match.reference.key)
        if twin is None:
            return None
        triples = _pairs(match.candidate.outputs, match.reference.outputs, twin.outputs)
        return _worst(triples, self.dtype, self.threshold)

    def rerun_judge(self, match: Any) -> Callable[[Mapping[str, torch.Tensor]], bool | None] | None:
        """For the culprit search: ``outputs of the candidate re-run -> still fails?`` (None: no verdict)."""
        ref = match.reference
        if ref.module is None:
            return None

        def still_fails(outputs: Mapping[str, torch.Tensor]) -> bool | None:
            local = self._local_exact(ref)
            if local is None:
                return None
            j = _worst(_pairs(dict(outputs), ref.outputs, local), self.dtype, self.threshold)
            return None if j is None else not j.passed

        return still_fails

    def _local_exact(self, ref: Record) -> dict[str, torch.Tensor] | None:
        """The float64 twin of ``ref``'s module run on ``ref``'s recorded inputs cast to float64."""
        try:
            module = self.exact.get_submodule(ref.name) if ref.name != "<root>" else self.exact
        except AttributeError:
            return None
        to64 = (lambda t: t.to(torch.float64) if t.is_floating_point() else t.clone())
        try:
            with torch.no_grad():
                out = module(*map_tensors(ref.args, to64), **map_tensors(ref.kwargs, to64))
        except Exception:  # a signature or dtype the float64 copy cannot take: no local verdict
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
    include: Any = None,
) -> NoiseVerdicts:
    """Measure the noise floor and make it the verdict of every row it can judge.

    ``option``: ``None`` (default) on for float32/bfloat16/float16 full-mode comparisons of a live
    reference, off otherwise; ``True``/``False`` force it; a number turns it on with that ratio
    threshold. Each judged row keeps its absolute-tolerance verdict in ``row.passed_tolerance``
    (the report shows both); ``row.noise`` holds the :class:`NoiseJudgement`.
    """
    if option is not None and not isinstance(option, (bool, int, float)):
        raise TypeError(f"noise_floor must be None (automatic), True, False or a ratio threshold, got {option!r}")
    threshold = None if isinstance(option, bool) or option is None else float(option)
    if threshold is not None and not (threshold > 0 and math.isfinite(threshold)):
        raise ValueError(f"noise_floor ratio threshold must be a positive number, got {option!r}")
    wanted = option is not False and (option is not None or dtype in DEFAULT_NOISE_RATIO)
    if not wanted:
        return NoiseVerdicts(False)
    why_not = ("the comparison runs at float64: no rounding floor to measure" if dtype == "float64"
               else "summary mode keeps no tensors to measure the floor against" if mode != "full"
               else "the reference is a recorded trace, not a module" if reference is None else None)
    if why_not:
        return NoiseVerdicts(False, note=f"noise floor off: {why_not}" if option else None)
    need, room = _floor_bytes(reference, rows), _room(reference)
    if option is None and room is not None and need > room:
        return NoiseVerdicts(False, note=f"noise floor off: a float64 copy of the reference and its trace need about "
                                         f"{need / 2**30:.2f} GiB, {room / 2**30:.2f} GiB are free; noise_floor=True "
                                         f"forces it")
    started = time.perf_counter()
    try:
        floor = NoiseFloor.measure(reference, call, dtype, reference_call=reference_call,
                                   reference_outputs=reference_outputs, include=include, threshold=threshold)
    except Exception as exc:  # a reference that cannot be copied or run at float64
        return NoiseVerdicts(False, note=f"noise floor off: the float64 copy of the reference failed "
                                         f"({type(exc).__name__}: {exc}); absolute tolerances decide")
    for row in rows:
        judged = floor.judge_match(row.match)
        if judged is None:
            continue
        row.noise, row.passed_tolerance = judged, row.passed
        row.passed = judged.passed
        row.rerun_judge = floor.rerun_judge(row.match)
    outputs = floor.judge_outputs(final)
    return NoiseVerdicts(True, floor.threshold, outputs, seconds=time.perf_counter() - started)


def _floor_bytes(reference: nn.Module, rows: Sequence[Any]) -> int:
    """Float64 bytes of the reference's floating tensors plus the outputs of its aligned calls."""
    weights = sum(t.numel() for t in (*reference.parameters(), *reference.buffers()) if t.is_floating_point())
    outputs = sum(getattr(leaf, "numel", lambda: 0)() for row in rows for leaf in row.match.reference.outputs.values()
                  if isinstance(leaf, torch.Tensor))
    return 8 * (weights + outputs)


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
