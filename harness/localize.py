"""Measure aligned calls and localize the error: first divergence and culprit.

``first_divergence`` is the earliest aligned call (in completion order, so the innermost of
nested calls comes first) whose output fails tolerance.

The ``culprit`` is the innermost module that introduces an error itself rather than receiving
one. For each failing call:

- inputs bitwise equal to the reference twin's, or no tensor inputs at all -> made here;
- inputs differ, and the module may be re-run (its arguments have the reference's structure):
  run the candidate module on the reference's recorded inputs; if that output still fails, the
  error is made here, otherwise it was received;
- inputs differ and no re-run is possible: made here if the inputs agree within tolerance,
  received otherwise.

A call that makes an error counts as ``introduced`` unless one of its descendants (a call nested
inside it) already does, in which case it ``contains`` the error. The culprit is the first
``introduced`` call. (Prior art: coremltools' comparator blames an op whose output fails while
its direct inputs pass; torch.ao.ns' shadow mode feeds one model's inputs into the other's layers.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from harness.align import Match
from harness.metrics import Metrics, Tolerance, measure, measure_summaries
from harness.trace import Leaf, Record, TensorSummary, flatten_tensors, map_tensors

__all__ = ["Row", "Status", "measure_match", "localize"]

Status = Literal["ok", "introduced", "contains", "propagated", "tentative"]


@dataclass
class Row:
    """One aligned module call and its error."""

    match: Match
    metrics: Metrics
    tolerance: Tolerance
    passed: bool
    leaf: str  # the output leaf the metrics describe (the worst one)
    status: Status = "ok"
    reran: bool = False

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


def _leaf_pairs(cand: dict[str, Leaf], ref: dict[str, Leaf]) -> list[tuple[str, Leaf, Leaf]]:
    """Same keys: leaf by leaf. Otherwise: in order, as far as both sides go, by equal shape."""
    if cand.keys() == ref.keys():
        return [(k, cand[k], ref[k]) for k in cand]
    pairs, rest = [], list(ref.items())
    for k, a in cand.items():
        for idx, (rk, b) in enumerate(rest):
            if tuple(a.shape) == tuple(b.shape):
                pairs.append((k if k == rk else f"{k}~{rk}", a, b))
                del rest[idx]
                break
    return pairs


def _worst(pairs: list[tuple[str, Leaf, Leaf]], tol: Tolerance) -> tuple[str, Metrics, bool]:
    """Metrics of the leaf furthest beyond its bound, and whether every leaf passes."""
    worst: tuple[float, str, Metrics] | None = None
    passed = True
    for key, a, b in pairs:
        if isinstance(a, TensorSummary) or isinstance(b, TensorSummary):
            m = measure_summaries(_summary(a), _summary(b))
        elif not (a.is_floating_point() or a.is_complex()) and not (b.is_floating_point() or b.is_complex()):
            m = measure(a.double(), b.double())
        else:
            m = measure(a, b)
        ok = m.passes(tol)
        passed &= ok
        ratio = float("inf") if not ok and (m.shape_mismatch or m.nonfinite_mismatch) else (
            m.max_abs / max(tol.bound(m.ref_absmax), 1e-300))
        if worst is None or ratio > worst[0]:
            worst = (ratio, key, m)
    if worst is None:  # no comparable tensor leaves: structure differs entirely
        nan = float("nan")
        return "", Metrics(nan, nan, nan, nan, nan, shape_mismatch=True), False
    return worst[1], worst[2], passed


def _summary(leaf: Leaf) -> TensorSummary:
    return leaf if isinstance(leaf, TensorSummary) else TensorSummary.of(leaf)


def measure_match(match: Match, tol: Tolerance) -> Row:
    leaf, metrics, passed = _worst(_leaf_pairs(match.candidate.outputs, match.reference.outputs), tol)
    return Row(match=match, metrics=metrics, tolerance=tol, passed=passed, leaf=leaf)


def _inputs_state(cand: Record, ref: Record, tol: Tolerance) -> Literal["equal", "close", "differ"]:
    if not cand.inputs:
        # No tensor flows into the candidate call (e.g. a RoPE table built from grid integers):
        # no error can have reached it through its inputs, so a wrong output is made here.
        return "equal"
    pairs = _leaf_pairs(cand.inputs, ref.inputs)
    if not pairs:
        return "differ"
    if all(isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
           and torch.equal(a.to(b.dtype), b) for _, a, b in pairs):
        return "equal"
    if all(isinstance(a, TensorSummary) and a == b for _, a, b in pairs):
        return "equal"  # summary mode: identical statistics are the closest to equal one can tell
    return "close" if _worst(pairs, tol)[2] else "differ"


def _rerunnable(cand: Record, ref: Record, patterns: Sequence[str] | None) -> bool:
    if cand.module is None or ref.module is None:
        return False
    if patterns is not None:
        return any(re.search(p, cand.name) for p in patterns)
    # Automatic: the same argument structure on both sides (same leaf paths and shapes).
    return cand.inputs.keys() == ref.inputs.keys() and all(
        tuple(cand.inputs[k].shape) == tuple(ref.inputs[k].shape) for k in cand.inputs
    ) and len(cand.args) == len(ref.args) and cand.kwargs.keys() == ref.kwargs.keys()


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


def _rerun_fails(row: Row) -> bool | None:
    """Run the candidate module on the reference's inputs: True if it still fails, None if it cannot run."""
    cand, ref = row.match.candidate, row.match.reference
    # copies: an in-place module must not write into the recorded trace
    args = map_tensors(_cast_like(ref.args, cand.args), torch.Tensor.clone)
    kwargs = map_tensors(_cast_like(ref.kwargs, cand.kwargs), torch.Tensor.clone)
    try:
        with torch.no_grad():
            out = cand.module(*args, **kwargs)
    except Exception:  # a signature that only looked compatible: no verdict from re-running
        return None
    outputs = {k: v.detach() for k, v in flatten_tensors(out).items()}
    return not _worst(_leaf_pairs(outputs, ref.outputs), row.tolerance)[2]


def localize(rows: list[Row], *, rerun: Sequence[str] | None = None) -> tuple[str | None, str | None]:
    """Set each row's status; return (first_divergence, culprit) as candidate names."""
    failing = [r for r in rows if not r.passed]
    if not failing:
        return None, None
    makes_error: list[Row] = []
    for row in failing:
        cand, ref = row.match.candidate, row.match.reference
        state = _inputs_state(cand, ref, row.tolerance)
        verdict: bool | None = None
        if state != "equal" and _rerunnable(cand, ref, rerun):
            verdict = _rerun_fails(row)
            row.reran = verdict is not None
        if verdict is None:
            verdict = state != "differ"
        if verdict:
            makes_error.append(row)
        else:
            row.status = "propagated"
    for row in makes_error:
        inner = any(row.match.candidate.contains(o.match.candidate) for o in makes_error if o is not row)
        row.status = "contains" if inner else "introduced"
    culprit = next((r for r in rows if r.status == "introduced"), None)
    return failing[0].candidate, culprit.candidate if culprit else None
