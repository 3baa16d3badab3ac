"""compare() and compare_pair(): trace both models on the same inputs, align, measure, localize."""

from __future__ import annotations

import time
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import nn

from harness.align import align, check_rename
from harness.localize import Row, localize, measure_match
from harness.metrics import Metrics, Tolerance, check_tolerances, dtype_name, measure, tolerance_for
from harness.pairs import Call, Pair, as_call, get_pair
from harness.report import ParityReport
from harness.trace import Tracer, flatten_tensors

__all__ = ["compare", "compare_pair"]

Outputs = Callable[[Any], Mapping[str, torch.Tensor]]


def _final_outputs(
    cand_out: Any, ref_out: Any, candidate_outputs: Outputs | None, reference_outputs: Outputs | None
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    cand = dict(candidate_outputs(cand_out)) if candidate_outputs else flatten_tensors(cand_out)
    ref = dict(reference_outputs(ref_out)) if reference_outputs else flatten_tensors(ref_out)
    if cand.keys() == ref.keys():
        return [(k, cand[k], ref[k]) for k in cand]
    if candidate_outputs is None and reference_outputs is None and len(cand) == len(ref):
        return [(f"{kc}~{kr}", cand[kc], ref[kr]) for kc, kr in zip(cand, ref)]
    raise ValueError(
        f"final outputs differ in structure: candidate leaves {sorted(cand)} vs reference leaves "
        f"{sorted(ref)}; give candidate_outputs=/reference_outputs= functions returning the same keys"
    )


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _model_device(model: nn.Module) -> str:
    for p in model.parameters():
        return str(p.device)
    return "cpu"


def compare(
    candidate: nn.Module,
    reference: nn.Module,
    inputs: Any,
    *,
    rename: Sequence[tuple[str, str]] = (),
    dtype: torch.dtype | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
    module_tolerances: Sequence[tuple[str, str | None, Tolerance]] = (),
    candidate_call: Callable[[nn.Module, Call], Any] | None = None,
    reference_call: Callable[[nn.Module, Call], Any] | None = None,
    candidate_outputs: Outputs | None = None,
    reference_outputs: Outputs | None = None,
    rerun: Sequence[str] | None = None,
    include: str | None = None,
    allow_nonfinite: bool = False,
    mode: Literal["full", "summary"] = "full",
    pair_name: str | None = None,
) -> ParityReport:
    """Run both models on ``inputs`` under tracing and report layer-by-layer parity.

    ``inputs``: a tensor, a tuple of positional args, a dict of kwargs or a :class:`harness.Call`;
    each side gets its own copy of the same values. ``dtype`` picks the tolerance policy (default: the
    reference's parameter dtype). Final outputs containing NaN/Inf fail unless ``allow_nonfinite``.
    ``mode="summary"`` keeps only statistics of intermediate tensors (for models whose full traces
    do not fit in memory): layer errors are then lower bounds (see ``measure_summaries``) and no
    module is re-run; final outputs are always compared exactly.
    See :class:`harness.Pair` for the other options.
    """
    for side, model in (("candidate", candidate), ("reference", reference)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{side} must be an nn.Module, got {type(model).__name__}")
    check_rename(rename)
    check_tolerances(tolerances, module_tolerances)
    cand_dtype, ref_dtype = _model_dtype(candidate), _model_dtype(reference)
    if cand_dtype != ref_dtype:
        raise TypeError(
            f"candidate parameters are {cand_dtype} but reference parameters are {ref_dtype}; build both "
            f"in one dtype (pair.build(dtype=...) or model.to(dtype)) so both see the same inputs"
        )
    call = as_call(inputs)
    dtype = dtype or ref_dtype
    name = dtype_name(dtype)
    tol = tolerance_for(dtype, overrides=tolerances)
    started = time.perf_counter()
    # Each side gets its own copy: a model that writes into its input must not change what the
    # other one sees. What each side changed is reported.
    cand_call, ref_call = call.clone(), call.clone()
    with torch.no_grad():
        with Tracer(candidate, include=include, mode=mode) as cand_trace:
            cand_out = candidate_call(candidate, cand_call) if candidate_call else cand_call(candidate)
        with Tracer(reference, include=include, mode=mode) as ref_trace:
            ref_out = reference_call(reference, ref_call) if reference_call else ref_call(reference)
    final = _final_outputs(cand_out, ref_out, candidate_outputs, reference_outputs)
    outputs = {key: measure(a, b) for key, a, b in final}
    alignment = align(cand_trace.records, ref_trace.records, rename)
    rows: list[Row] = []
    for match in alignment.matches:
        module_tol = tolerance_for(dtype, module=match.candidate.name, overrides=tolerances,
                                   module_overrides=module_tolerances)
        rows.append(measure_match(match, module_tol))
    passed, first_divergence, culprit, notes = _verdict(final, outputs, rows, tol, allow_nonfinite, rerun)
    if mode == "summary":
        notes.insert(0, "summary mode: layer errors are lower bounds from statistics (mean, std, absmax)")
    mutations = {"candidate": call.mutated_in(cand_call), "reference": call.mutated_in(ref_call)}
    for side, paths in mutations.items():
        if paths:
            notes.append(f"the {side} modified its inputs in place: {', '.join(paths)}")
    return ParityReport(
        pair=pair_name,
        dtype=name,
        device=_model_device(reference),
        passed=passed,
        first_divergence=first_divergence,
        culprit=culprit,
        output=_worst_output(outputs, tol),
        outputs=outputs,
        rows=rows,
        unmatched_candidate=[r.key for r in alignment.unmatched_candidate],
        unmatched_reference=[r.key for r in alignment.unmatched_reference],
        tolerance=tol,
        seconds=time.perf_counter() - started,
        first_nonfinite={"candidate": cand_trace.first_nonfinite, "reference": ref_trace.first_nonfinite},
        passthrough_candidate=[r.key for r in alignment.passthrough_candidate],
        passthrough_reference=[r.key for r in alignment.passthrough_reference],
        input_mutations=mutations,
        notes=notes,
        mode=mode,
    )


def _verdict(
    final: list[tuple[str, torch.Tensor, torch.Tensor]],
    outputs: Mapping[str, Metrics],
    rows: list[Row],
    tol: Tolerance,
    allow_nonfinite: bool,
    rerun: Sequence[str] | None,
) -> tuple[bool, str | None, str | None, list[str]]:
    """(passed, first_divergence, culprit, notes) from the final outputs and the aligned rows."""
    notes: list[str] = []
    nonfinite = sorted(k for k, a, b in final if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())))
    if nonfinite and not allow_nonfinite:
        notes.append(f"non-finite values (NaN/Inf) in final outputs {nonfinite}: agreeing NaNs prove nothing "
                     f"(pass allow_nonfinite=True if they are expected)")
    outputs_pass = all(m.passes(tol) for m in outputs.values()) and (allow_nonfinite or not nonfinite)
    if not (outputs_pass and all(r.passed for r in rows if r.match.how != "structure")):
        first_divergence, culprit = localize(rows, rerun=rerun)
        return False, first_divergence, culprit, notes
    # Outputs and every layer paired by name agree: a failing structural pairing is a guess that
    # was wrong, not evidence of an error. Keep it visible, do not fail on it.
    tentative = [r for r in rows if not r.passed]
    for row in tentative:
        row.status = "tentative"
    if tentative:
        notes.append(f"{len(tentative)} structurally paired rows differ (tentative pairings by shape, "
                     f"not counted): {', '.join(r.key for r in tentative[:5])}")
    return True, None, None, notes


def _worst_output(outputs: Mapping[str, Metrics], tol: Tolerance) -> Metrics:
    if not outputs:
        raise ValueError("the models returned no tensor outputs to compare")
    return max(outputs.values(), key=lambda m: (
        not m.passes(tol), m.max_abs / max(tol.bound(m.ref_absmax), 1e-300) if m.max_abs == m.max_abs else 1e300))


def compare_pair(
    pair: str | Pair,
    *,
    candidate: nn.Module | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    inputs: Any = None,
    **overrides: Any,
) -> ParityReport:
    """Build a registered pair (or take ``candidate``, e.g. a modified one) and compare it.

    When ``candidate`` is given it is paired with a freshly built reference; ``pair.build`` is
    deterministic, so a candidate taken from ``pair.build()`` and then modified is compared
    against exactly the weights it started from.
    """
    pair = get_pair(pair) if isinstance(pair, str) else pair
    if not isinstance(pair, Pair):
        raise TypeError(f"pair must be a registered name or a harness.Pair, got {type(pair).__name__}")
    if candidate is not None and not isinstance(candidate, nn.Module):
        raise TypeError(f"candidate must be an nn.Module, got {type(candidate).__name__}")
    if candidate is None:
        candidate, reference = pair.build(dtype=dtype, device=device)
    else:
        reference = pair.build_reference(dtype=dtype, device=device)
    call = pair.inputs(dtype=dtype, device=device) if inputs is None else as_call(inputs).to(dtype, device)
    options = pair.compare_options() | overrides
    return compare(candidate, reference, call, dtype=dtype, pair_name=pair.name, **options)
