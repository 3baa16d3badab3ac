"""compare() and compare_pair(): trace both models on the same inputs, align, measure, localize."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import nn

from harness import guards, progress
from harness.align import Match, align, batched_twins, choose_twins, fused_records, held_apart
from harness.backward import check_backward, compare_backward
from harness.adapters import UserAdapter, find_adapter
from harness.checks import check_module, type_error
from harness.diagnose import annotate_mismatches, attribute_diff, diagnose, origins_diagnosis, setting_notes
from harness.localize import (Localization, Row, _holds_any, _leaf_pairs, _shaped_alike, drop_trailing_ops,
                              extend_twins, localize_all, measure_match)
from harness.memory import trace_budget
from harness.noise import Narrowing, candidate_narrowing, float64_hint, noise_verdicts, ratio_divisor
from harness.metrics import Metrics, Tolerance, dtype_name, measure, tolerance_for
from harness.options import CompareOptions
from harness.pairs import Call, Pair, as_call, as_pair
from harness.report import ParityReport
from harness.trace import (ROOT, Record, TensorSummary, Tracer, is_auto_spill, name_filter, output_leaves,
                           outputs_read_after, spill_folder)
from harness.tracefile import Replay, Trace
from harness.weights import WeightMap, infer_map

__all__ = ["compare", "compare_pair"]

Outputs = Callable[[Any], Mapping[str, torch.Tensor]]


def _final_outputs(
    cand_out: Any, ref_out: Any, candidate_outputs: Outputs | None, reference_outputs: Outputs | None
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    cand = output_leaves(cand_out, candidate_outputs, side="candidate")
    ref = output_leaves(ref_out, reference_outputs, side="reference")
    if cand.keys() == ref.keys():
        return [(k, cand[k], ref[k]) for k in cand]
    if len(cand) == len(ref) == 1:  # one tensor against one: nothing to choose, whatever their keys
        (kc, a), (kr, b) = next(iter(cand.items())), next(iter(ref.items()))
        return [(kc or kr if not (kc and kr) else f"{kc}~{kr}", a, b)]
    if candidate_outputs is None and reference_outputs is None and len(cand) == len(ref):
        return [(f"{kc}~{kr}", cand[kc], ref[kr]) for kc, kr in zip(cand, ref)]
    leaves = (lambda keys: "one tensor" if list(keys) == [""] else f"the tensors {sorted(keys)}")
    raise ValueError(
        f"final outputs differ in structure: the candidate returns {leaves(cand)}, the reference {leaves(ref)}; "
        f"give candidate_outputs=/reference_outputs= functions picking the tensors to compare "
        f"(on the command line: --candidate-output/--reference-output NAME)"
    )


def _outputs_in_reference_layout(final: list[tuple[str, torch.Tensor, torch.Tensor]], tol: Tolerance
                                 ) -> tuple[list[tuple[str, torch.Tensor, torch.Tensor]], list[str]]:
    """Final outputs that hold the same elements in another layout (tokens ``(B, H*W, C)`` against a
    map ``(B, H, W, C)``) compared through the layout adapter that fits them, as twin modules are,
    with a note for each; outputs whose shapes no layout explains stay as they are (a shape mismatch)."""
    adapted, notes = [], []
    for key, a, b in final:
        adapter = find_adapter(a, b, tol=tol) if a.shape != b.shape else None
        if adapter is not None:
            notes.append(f"output{f' {key}' if key else ''}: the candidate gives shape {tuple(a.shape)}, the reference "
                         f"{tuple(b.shape)}; compared through {adapter.description} (candidate_outputs= or "
                         f"reference_outputs= choose the layout)")
            a = adapter.apply(a)
        elif a.shape != b.shape:
            notes.append(f"output{f' {key}' if key else ''}: the candidate gives shape {tuple(a.shape)}, the reference "
                         f"{tuple(b.shape)}, and no layout turns one into the other: nothing to compare element by "
                         f"element (another number of classes, tokens or channels?)")
        adapted.append((key, a, b))
    return adapted, notes


def _select_root_outputs(final: list[tuple[str, torch.Tensor, torch.Tensor]], *sides: list[Record]) -> None:
    """Each model's root call holds the outputs ``candidate_outputs=`` / ``reference_outputs=`` select,
    by the keys the final comparison pairs them with: the ``<root>`` row then measures what the
    verdict does, not the first tensor of a ``ModelOutput`` the other model does not return."""
    for side, records in enumerate(sides):
        root = next((r for r in reversed(records) if r.name == ROOT), None)
        if root is None:
            continue
        summary = any(isinstance(v, TensorSummary) for v in root.outputs.values())
        leaves = {key: (a if side == 0 else b).detach() for key, a, b in final}
        root.outputs = {k: TensorSummary.of(v) if summary else v for k, v in leaves.items()}


def _paired_leaves_first(match: Match, cand_records: Sequence[Record], ref_records: Sequence[Record]) -> None:
    """Twins returning more leaves of one shape on one side than on the other (a backbone returning
    its block outputs as a list, against a model output holding a final norm's result and every
    hidden state) are compared on the leaves that pair: of the longer side's leaves, those a later
    call reads or the model returns, and where more remain, the ones in their order whose values
    stand nearest the other side's. Leaves are paired in order within a shape, so the chosen ones
    move ahead of the rest, which pair with nothing; the twins' re-runs and rounding floors read
    the same order. Twins with the same keys, or as many leaves of each shape, stay as they are."""
    cand, ref = match.candidate, match.reference
    if ROOT in (cand.name, ref.name) or cand.outputs.keys() == ref.outputs.keys():
        return
    for longer, shorter, records in ((cand, ref, cand_records), (ref, cand, ref_records)):
        unpaired: list[str] = []
        read = None
        theirs = _by_shape(shorter.outputs)
        for shape, keys in _by_shape(longer.outputs).items():
            others = theirs.get(shape, [])
            if not others or len(keys) <= len(others):
                continue
            read = outputs_read_after(longer, records) if read is None else read
            pool = [k for k in keys if k in read]
            pool = pool if len(pool) >= len(others) else keys
            chosen = _nearest_in_order([longer.outputs[k] for k in pool], [shorter.outputs[k] for k in others])
            unpaired += [k for k in keys if k not in {pool[i] for i in chosen}]
        if unpaired:
            longer.outputs = {k: v for k, v in longer.outputs.items() if k not in unpaired} | {
                k: longer.outputs[k] for k in unpaired}


def _by_shape(leaves: Mapping[str, Any]) -> dict[tuple, list[str]]:
    groups: dict[tuple, list[str]] = {}
    for key, leaf in leaves.items():
        groups.setdefault(tuple(leaf.shape), []).append(key)
    return groups


def _nearest_in_order(pool: Sequence[Any], others: Sequence[Any]) -> list[int]:
    """Indices into ``pool``, increasing, one per leaf of ``others`` (``len(pool) >= len(others)``),
    whose summed distance to ``others`` taken in order is the least: a leaf wrong by an error
    upstream still stands nearer its own counterpart than another layer's output."""
    n, m = len(pool), len(others)
    if n == m:
        return list(range(n))
    # best[i][j]: the least cost of pairing others[:i] with pool[:j], pool[j-1] paired or skipped
    inf = float("inf")
    best = [[0.0] * (n + 1)] + [[inf] * (n + 1) for _ in range(m)]
    for i in range(1, m + 1):
        for j in range(i, n - m + i + 1):
            best[i][j] = min(best[i][j - 1], best[i - 1][j - 1] + _distance(pool[j - 1], others[i - 1]))
    chosen, j = [], n
    for i in range(m, 0, -1):
        while best[i][j] == best[i][j - 1] and j > i:
            j -= 1
        chosen.append(j - 1)
        j -= 1
    return chosen[::-1]


def _distance(a: Any, b: Any) -> float:
    """Relative L2 distance of two leaves (of statistics, for a summary)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        a, b = a.detach().double(), b.detach().to(a.device, torch.float64)
        return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300))
    a, b = (v if isinstance(v, TensorSummary) else TensorSummary.of(v) for v in (a, b))
    return (abs(a.mean - b.mean) + abs(a.std - b.std)) / max(abs(b.mean) + b.std, 1e-300)


def _model_device(model: nn.Module) -> str:
    for p in model.parameters():
        return str(p.device)
    return "cpu"


@guards.preserves_models
def compare(
    candidate: nn.Module,
    reference: nn.Module | Trace,
    inputs: Any = None,
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
    include: str | Mapping[str, str] | None = None,
    exclude: str | Mapping[str, str] | None = None,
    allow_nonfinite: bool = False,
    mode: Literal["full", "summary", "auto"] = "full",
    pair_name: str | None = None,
    weights: WeightMap | None = None,
    adapters: Sequence[UserAdapter] = (),
    noise_floor: bool | float | None = None,
    backward: bool = False,
    backward_loss: Any = None,
    spill: Any = "auto",
    diagnose: bool = True,
) -> ParityReport:
    """Run both models on ``inputs`` under tracing and report layer-by-layer parity.

    ``inputs``: a tensor, a tuple of positional args, a dict of kwargs or a :class:`harness.Call`;
    each side gets its own copy of the same values. ``dtype`` picks the tolerance policy (default: the
    reference's parameter dtype; for models without floating parameters, that of the outputs). Final
    outputs containing NaN/Inf fail unless ``allow_nonfinite``.
    ``mode="summary"`` keeps only statistics of intermediate tensors (for models whose full traces
    do not fit in memory): layer errors are then lower bounds (see ``measure_summaries``) and no
    module is re-run; final outputs are always compared exactly. ``mode="auto"`` traces in full
    unless the trace would not fit in memory, then in summary mode (see :mod:`harness.memory`).
    ``spill``: a folder (``True``: the temp folder) where the full traces keep their copies of
    1 MiB and more in files, each read back when it is measured: exact layer errors for models
    whose traces do not fit in memory next to them (:class:`harness.Tracer`; Linux gives the
    pages back, elsewhere they stay resident). A spilled copy is not charged to the memory budget.
    The default ``"auto"`` keeps each trace's first 256 MiB of such copies in memory and spills
    the rest to the temp folder where that saves memory (Linux, a folder on disk); ``None`` or
    ``False`` keeps everything in memory.
    Both models are left bitwise as they were (see :mod:`harness.guards`).
    ``weights``: a :class:`harness.WeightMap` (from :func:`harness.map_weights`) pairing modules
    through the tensors they own, for models whose names differ. Without it, models whose state-dict
    keys differ and that have no ``rename`` rules get an inferred map (names are then not trusted
    alone). ``adapters``: ``(regex on candidate module name, fn)`` bringing that module's output into
    the reference's layout, where the automatic layout search does not find it.
    ``include``/``exclude``: regexes on module names (or ``{"candidate": ..., "reference": ...}``
    for one per side) selecting the traced modules.
    ``noise_floor``: judge float32/bfloat16/float16 layers against the reference's own rounding
    error, measured on a float64 copy of it (:mod:`harness.noise`; default on at those dtypes in
    full mode, off at float64; a number sets the ratio threshold; ``False``: atol/rtol only). At
    float64, what fails atol/rtol where the reference itself computes in float32 (a norm upcasting
    to float32) is judged against that rounding (:func:`harness.noise.narrow_verdicts`); where the
    candidate does (a softmax given ``dtype=torch.float32``), against a run of it with those operations
    kept in float64 (:func:`_judged_wide`).
    A failing report explains the culprit's error operation by operation (``report.diagnosis``,
    :mod:`harness.diagnose`); ``diagnose=False`` skips that, for callers that need only the verdict
    and the culprit.
    ``backward=True``: both sides also run backward from one loss and the report's ``backward``
    compares their gradients per parameter and per aligned module (:mod:`harness.backward`);
    ``backward_loss``: ``output -> scalar`` for both sides or a pair ``(candidate_fn, reference_fn)``
    (default: the outputs weighted by a seeded random tensor, the same on both sides).
    See :class:`harness.CompareOptions` for every option.
    """
    options = CompareOptions(
        rename=rename, tolerances=tolerances, module_tolerances=module_tolerances, candidate_call=candidate_call,
        reference_call=reference_call, candidate_outputs=candidate_outputs, reference_outputs=reference_outputs,
        rerun=rerun, allow_nonfinite=allow_nonfinite, include=include, exclude=exclude, mode=mode, weights=weights,
        adapters=adapters, noise_floor=noise_floor, backward=backward, backward_loss=backward_loss, spill=spill,
        diagnose=diagnose)
    return _compare(candidate, reference, inputs, options, dtype=dtype, pair_name=pair_name)


def _compare(candidate: nn.Module, reference: nn.Module | Trace, inputs: Any, o: CompareOptions, *,
             dtype: torch.dtype | None, pair_name: str | None) -> ParityReport:
    """:func:`compare` with its options ``o`` gathered (and checked) in one value. A float64 candidate
    failing atol/rtol that computes some operations in float32 is compared again with them kept in
    float64 (:func:`_judged_wide`)."""
    report, narrowed = _compare_once(candidate, reference, inputs, o, dtype=dtype, pair_name=pair_name)
    if narrowed is None:
        return report
    actual = _Actual.of(report)
    del report  # its traces: the run below makes its own
    with narrowed.kept_wide():
        wide, _ = _compare_once(candidate, reference, inputs, o, dtype=dtype, pair_name=pair_name,
                                narrowed=narrowed, actual=actual)
    return _judged_wide(actual, wide, narrowed)


def _compare_once(candidate: nn.Module, reference: nn.Module | Trace, inputs: Any, o: CompareOptions, *,
                  dtype: torch.dtype | None, pair_name: str | None, narrowed: Narrowing | None = None,
                  actual: "_Actual | None" = None) -> tuple[ParityReport, Narrowing | None]:
    """The comparison, and where its forward fails at float64 against a live reference, from where
    the candidate computes some operations in float32, those operations (None: none). ``narrowed``:
    this run keeps them in float64 (none are looked for), and judges only what fails atol/rtol in
    ``actual``, the run computing them as the candidate does."""
    # A recorded reference (harness.load_trace): its records, outputs and inputs come from the file.
    replay = Replay.of(reference, candidate, inputs) if isinstance(reference, Trace) else None
    if replay is not None:
        reference, inputs, o = replay.module, replay.call, replay.options(o)
    check_module("candidate", candidate)
    check_module("reference", reference)
    if o.weights is not None:
        o.weights.check_fits(None, reference if replay is None else None,  # the candidate's are dropped, below
                             called=("compare(candidate, reference, ...)", candidate, reference))
    check_backward(o.backward, o.backward_loss, recorded=replay is not None)
    filters = {side: _module_filter(side, o.include, o.exclude) for side in ("candidate", "reference")}
    guards.check_dtypes(candidate, reference)
    call = as_call(inputs)
    if dtype is not None:
        dtype_name(dtype)  # an unknown dtype fails before anything runs
    started = time.perf_counter()
    # Each side gets its own copy: a model that writes into its input must not change what the
    # other one sees. What each side changed is reported.
    cand_call, ref_call = call.clone(), call.clone()
    budget = trace_budget(o.mode, reference)
    with torch.no_grad():
        progress.stage("trace candidate")
        with Tracer(candidate, include=filters["candidate"], mode=o.mode, budget=budget, spill=o.spill) as cand_trace:
            cand_out = guards.run_forward("candidate", candidate, cand_call, o.candidate_call)
        ref_draws = guards.RandomDraws()
        if replay is not None:
            ref_trace, ref_out = replay.recorded, replay.outputs
        else:
            progress.stage("trace reference")
            # copies bitwise equal to the candidate's are shared: agreeing layers are kept once
            with Tracer(reference, include=filters["reference"], mode=o.mode, budget=budget,
                        share=cand_trace, spill=o.spill) as ref_trace, ref_draws:
                ref_out = guards.run_forward("reference", reference, ref_call, o.reference_call)
    final = _final_outputs(cand_out, ref_out, o.candidate_outputs, o.reference_outputs)
    if o.candidate_outputs is not None or o.reference_outputs is not None:
        _select_root_outputs(final, cand_trace.records, ref_trace.records)
    if final and all(a.numel() == 0 and b.numel() == 0 for _, a, b in final):
        shapes = ", ".join(f"{k or 'output'} {tuple(a.shape)}" for k, a, _ in final)
        raise ValueError(f"the final outputs hold no elements ({shapes}): nothing would be compared; give inputs "
                         f"with at least one sample (an empty batch passes any comparison)")

    def release() -> None:
        for trace in (cand_trace, ref_trace):
            if isinstance(trace, Tracer):
                trace.release()

    dtype = dtype or guards.comparison_dtype(candidate, reference, call, final)
    name = dtype_name(dtype)
    tol = tolerance_for(dtype, overrides=o.tolerances)
    final, layouts = _outputs_in_reference_layout(final, tol)
    outputs = {key: measure(a, b) for key, a, b in final}
    progress.stage("align")
    weights, stale = (None, []) if o.weights is None else o.weights.fitted(candidate)
    if weights is None and not o.rename and replay is None and _keys_differ(candidate, reference):
        weights = infer_map(candidate, reference, call, candidate_call=o.candidate_call,
                            reference_call=o.reference_call)
    twins = None if weights is None else choose_twins(weights.twin_chains(candidate, reference),
                                                        cand_trace.records, ref_trace.records, known=weights.twins)
    ref_records = ref_trace.records
    if weights is not None and o.mode == "full":
        fused, fused_twins = fused_records(cand_trace.records, ref_records, weights.fused_twins())
        ref_records = sorted([*ref_records, *fused], key=lambda r: r.end)
        twins = {**fused_twins, **twins}
    apart = None if weights is None else held_apart(*weights.tensor_links())
    alignment = batched_twins(align(cand_trace.records, ref_records, o.rename, twins=twins, apart=apart), ref_records)
    for match in alignment.matches:
        _paired_leaves_first(match, cand_trace.records, ref_records)
    release()

    def module_tolerance(module: str) -> Tolerance:
        return tolerance_for(dtype, module=module, overrides=o.tolerances, module_overrides=o.module_tolerances)

    adapters = [*o.adapters, *(weights.output_adapters() if weights is not None else ())]

    def measured(match) -> Row:
        row = measure_match(match, module_tolerance(match.candidate.name), adapters)
        release()  # a spilled trace's copies leave memory again once measured
        return row

    rows = [measured(match) for match in alignment.matches]
    if twins:
        alignment = extend_twins(rows, alignment, measured)
    drop_trailing_ops(rows, alignment, measured)
    if actual is not None:
        actual.vouch(rows)
    progress.stage("localize")
    noise = noise_verdicts(o.noise_floor, name, rows, final, reference=None if replay is not None else reference,
                           call=call, mode=getattr(cand_trace, "mode", o.mode), reference_call=o.reference_call,
                           reference_outputs=o.reference_outputs, random_reference=ref_draws.drew, tolerance=tol)
    passed, found, notes = _verdict(final, outputs, rows, tol, o.allow_nonfinite, o.rerun,
                                    alignment.unmatched_candidate,
                                    output_passed=True if actual is not None and actual.passed else noise.outputs_passed,
                                    reference=ref_records, summary=getattr(cand_trace, "mode", o.mode) == "summary")
    notes += setting_notes(rows, name) if passed and name != "float64" else []
    caveat = None if passed or weights is None else weights.caveat(given=o.weights is not None)
    notes = [caveat, *notes] if caveat else notes
    if stale:  # before anything else: the pairing itself went without these entries
        notes.insert(0, f"the weight map names {len(stale)} candidate tensor(s) the candidate does not have or holds "
                        f"in another shape ({', '.join(stale[:5])}{', ...' if len(stale) > 5 else ''}): those entries "
                        f"were left out; the model changed since the map was made, or the map is another model's")
    diagnosis = [] if passed or not o.diagnose else _diagnosis(
        rows, found, reference if replay is None else None, weights, candidate, cand_trace.records, ref_records,
        root_call=None if o.reference_call is None else _root_record(reference, call, o.reference_call))
    if not passed:
        annotate_mismatches(rows, final, outputs, tol)
        found, rows = _blamed_parts(found, rows, diagnosis)
        found, diagnosis = _holder_of_missing(found, diagnosis, weights, candidate, cand_trace.records, rows)
        found = _maker_named(found, diagnosis, candidate, cand_trace.records, rows, ref_records)
        found, diagnosis = _gap_maker(found, diagnosis, candidate, cand_trace.records, rows, ref_records)
        found, diagnosis = _arranging_caller(found, diagnosis, candidate, cand_trace.records, rows, ref_records)
        found, within = _setting_within_rounding(found, diagnosis, rows)
        notes += within
    notes += ([noise.note] if noise.note else []) + float64_hint(pair_name, name, passed, found.culprit, rows)
    first_divergence, culprit = found.first_divergence, found.culprit
    release()
    notes += layouts + list(alignment.notes) + (replay.notes if replay is not None else [])
    notes += _spill_notes(o.spill, cand_trace, ref_trace)
    if o.mode == "summary":
        notes.insert(0, "summary mode: layer errors are lower bounds from statistics (mean, std, absmax)")
    mutations = {"candidate": call.mutated_in(cand_call), "reference": call.mutated_in(ref_call)}
    for side, paths in mutations.items():
        if paths:
            notes.append(f"the {side} modified its inputs in place: {', '.join(paths)}")
    backward_result, forward_passed = None, passed
    if o.backward:
        progress.stage("backward")
        backward_result = compare_backward(
            candidate, reference, call, rows, weights=weights, loss=o.backward_loss, rerun=o.rerun,
            tolerance=module_tolerance, candidate_call=o.candidate_call, reference_call=o.reference_call,
            candidate_outputs=o.candidate_outputs, reference_outputs=o.reference_outputs)
        passed = passed and backward_result.passed
    progress.done()
    report = ParityReport(
        pair=pair_name,
        dtype=name,
        device=replay.device if replay is not None else _model_device(reference),
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
        mode=o.mode,
        introduced=found.introduced,
        weight_coverage=None if weights is None else weights.coverage,
        diagnosis=diagnosis,
        noise_floor=noise.to_dict(),
        backward=backward_result,
    )
    # (a recorded reference cannot be judged against its own float32 operations, as a run keeping the
    # candidate's in float64 needs where both compute alike: atol/rtol decide there)
    wanted = not (forward_passed or name != "float64" or narrowed is not None or replay is not None)
    found_narrow = candidate_narrowing(candidate, call, o.candidate_call) if wanted else None
    return report, found_narrow if found_narrow is not None and _narrowed_at(found_narrow, found.introduced) else None


def _narrowed_at(narrowed: Narrowing, introduced: Sequence[str]) -> bool:
    """Whether an error starts where the candidate computes in float32: at a module running such an
    operation, or one holding it (anywhere, where none was localized). One starting elsewhere is
    the candidate's own: its float32 operations agree there (a table built in float32 as the
    reference's buffer holds it), and keeping them in float64 would only make them differ."""
    made = {name for names in narrowed.modules.values() for name in names}
    return not introduced or any(n == ROOT or m == n or m.startswith(n + ".") for n in introduced for m in made)


@dataclass
class _Actual:
    """What a comparison's candidate itself gives: its outputs' numbers and each row's, by twin keys."""

    outputs: dict[str, Metrics]
    output: Metrics
    seconds: float
    rows: dict[tuple[str, str], tuple]  # (metrics, leaf, adapter, reference_shape, passed)
    passed: bool  # whether its final outputs passed

    @classmethod
    def of(cls, report: ParityReport) -> "_Actual":
        rows = {(r.match.candidate.key, r.match.reference.key): (r.metrics, r.leaf, r.adapter, r.reference_shape,
                                                                  r.passed) for r in report.rows}
        judged = report.noise_floor.get("outputs") or {}  # within the reference's own rounding, where it rounds
        return cls(report.outputs, report.output, report.seconds, rows, all(
            m.passes(report.tolerance) or judged.get(k, {}).get("passed") is True for k, m in report.outputs.items()))

    def vouch(self, rows: list[Row]) -> None:
        """Rows of the run keeping the float32 operations in float64 that passed atol/rtol as the
        candidate computes them pass: only what fails is judged on that run."""
        for row in rows:
            own = self.rows.get((row.match.candidate.key, row.match.reference.key))
            row.passed = row.passed or (own is not None and own[-1])


def _judged_wide(actual: _Actual, wide: ParityReport, narrowed: Narrowing) -> ParityReport:
    """A float64 comparison failing atol/rtol whose candidate computes some operations in float32 (a
    softmax given ``dtype=torch.float32``: transformers' eager attention) is judged as
    :func:`harness.noise.narrow_verdicts` judges a reference that does: on ``wide``, the comparison
    run again with those operations kept in float64 in every call of the candidate's modules (its
    forward, the culprit search's re-runs). Its verdict, culprit and diagnosis stand, with the
    numbers the candidate itself gives (``actual``: its outputs, each row's; a row passing only so
    keeps ``passed_tolerance`` False) and a note naming those operations and the modules running them."""
    for row in wide.rows:
        own = actual.rows.get((row.match.candidate.key, row.match.reference.key))
        if own is None:
            continue
        row.metrics, row.leaf, row.adapter, row.reference_shape, passed = own
        if row.passed and not passed:
            row.passed_tolerance = False
    outcome = (f"which agrees with the reference: the candidate matches it there only to float32's rounding (its "
               f"output max_abs {actual.output.max_abs:.3e})" if wide.passed else "which still disagrees")
    wide.notes.append(f"the candidate computes some operations in float32 inside this float64 run ({narrowed.named()}): "
                      f"what fails atol/rtol was judged against a run of it with those operations kept in float64 (its "
                      f"forward and every re-run of its modules), {outcome}")
    wide.outputs, wide.output, wide.seconds = actual.outputs, actual.output, actual.seconds + wide.seconds
    return wide


def _diagnosis(rows: list[Row], found: Localization, root: nn.Module | None, weights: WeightMap | None,
               candidate: nn.Module, cand_records: Sequence[Record], ref_records: Sequence[Record], *,
               root_call: Record | None = None) -> list[dict]:
    """Each origin's findings (the culprit first); where none is about the culprit, what the culprit
    search saw in the values (a residual add left out, an argument passed otherwise) comes first;
    with none at all, the culprit against the reference module its weights come from (``root_call``:
    the reference's root as ``reference_call`` ran it, when that call bypassed the root's forward)."""
    diagnosis = origins_diagnosis(rows, found.introduced, root=root, weights=weights, candidate=candidate)
    if not diagnosis:
        diagnosis = _summary_settings(rows, found.introduced, candidate, root)
    if not any(f["module"] == found.culprit for f in diagnosis):
        diagnosis = [*(f for f in found.findings if f["module"] == found.culprit), *diagnosis]
    if not diagnosis and root is not None and weights is not None:
        known = ref_records if root_call is None else [*ref_records, root_call]
        diagnosis = _weights_twin_diagnosis(found.culprit, weights, cand_records, known, root)
    return diagnosis


def _summary_settings(rows: list[Row], introduced: Sequence[str], candidate: nn.Module,
                      root: nn.Module | None) -> list[dict]:
    """The settings (eps, approximate, stride...) on which each origin and its twin differ, for
    rows whose records keep no module (summary mode keeps statistics only, so no op is re-run):
    the models themselves still hold the twins' settings. Their own settings only: submodules
    paired by build order alone may be no twins, and the model's root is all of them."""
    if root is None:
        return []
    findings = []
    for row in (r for r in rows if r.status == "introduced" and r.candidate in introduced):
        if row.match.candidate.module is not None or row.match.how == "structure" or ROOT in (row.candidate, row.reference):
            continue  # a full record is diagnosed op by op; a pairing by shape has no twin to diff
        try:
            mine = candidate if row.candidate == ROOT else candidate.get_submodule(row.candidate)
            theirs = root if row.reference == ROOT else root.get_submodule(row.reference)
        except AttributeError:
            continue
        findings += [f for f in attribute_diff(mine, theirs, row.candidate) if f["module"] == row.candidate]
    return findings


def _sources_around(culprit: str, weights: WeightMap) -> list[str]:
    """The reference tensors mapped into ``culprit``, or, for one holding none (a pool), into the
    nearest module around it that holds some: its ops run among theirs."""
    scope = culprit
    while True:
        prefix = "" if scope == ROOT else scope + "."
        sources = [k for e in weights.entries if e.candidate.startswith(prefix) for k in e.reference]
        if sources or scope == ROOT:
            return sources
        scope = scope.rpartition(".")[0] or ROOT


def _root_record(reference: nn.Module, call: Call, reference_call: Callable[[nn.Module, Call], Any]) -> Record:
    """The reference's root call as ``reference_call`` makes it (``m.forward_features(x)``): a root
    that is not called itself leaves no record, yet its own code (timm adding the position table)
    is what a candidate's untwinned ``embeddings`` must be held against. The record's module is a
    stand-in of the reference's class sharing its tensors and submodules, whose ``forward`` is
    ``reference_call``; the reference itself is left as it is."""
    stand_in = copy.copy(reference)  # a new object: its class may change, the model's may not
    stand_in.__class__ = type(type(reference).__name__, (type(reference),), {
        "forward": lambda self, *args, **kwargs: reference_call(self, Call(args, kwargs)),
        "__module__": type(reference).__module__})
    return Record(ROOT, 0, 0, module=stand_in, args=call.args, kwargs=dict(call.kwargs))


def _weights_twin_diagnosis(culprit: str | None, weights: WeightMap, cand_records: Sequence[Record],
                            ref_records: Sequence[Record], reference: nn.Module) -> list[dict]:
    """Findings for a culprit that alignment left without a twin and that no twinned call encloses
    (a comparison of features, where the models' roots are not compared): run against the reference
    module all its mapped tensors come from (the deepest module holding every source), if it ran,
    from its first op reading one of them (a root's features run before an untwinned classifier
    are not the classifier's ops); with no such op, no finding."""
    if culprit is None:
        return []
    sources = _sources_around(culprit, weights)
    if not sources:
        return []
    common: list[str] = []
    for level in zip(*(key.split(".")[:-1] for key in sources)):  # the module path all sources share
        if len(set(level)) > 1:
            break
        common.append(level[0])
    twin_name = ".".join(common) or ROOT
    cand = next((r for r in cand_records if r.name == culprit), None)
    ref = next((r for r in ref_records if r.name == twin_name), None)
    if cand is None or ref is None:
        return []
    reads = [key if twin_name == ROOT else key[len(twin_name) + 1:] for key in sources]
    try:
        findings = diagnose(Match(cand, ref, "weights"), reference, weights, reads=reads)
    except Exception:  # the diagnosis explains; it must never cost the verdict
        return []
    # the twin goes on past the culprit's work (a root running the blocks after the embeddings):
    # of the ops it applies that the culprit does not, only the first can be the culprit's
    missing = [i for i, f in enumerate(findings) if f["kind"] == "missing_op"]
    return [f for i, f in enumerate(findings) if i not in missing[1:]]


def _holder_of_missing(found: Localization, diagnosis: list[dict], weights: WeightMap | None,
                       candidate: nn.Module, cand_records: Sequence[Record],
                       rows: list[Row]) -> tuple[Localization, list[dict]]:
    """A culprit whose why is an op left out that reads reference tensors, where the candidate's
    copies of them sit in one untwinned call inside the culprit (an ``embeddings`` holding the
    position table it no longer adds, inside a root whose other calls all have twins): that call
    left it out, and it is named instead. The copies' module, when it never ran or is a torch
    module (an ``nn.Embedding`` that did its lookup), is not where the op was left out: the
    nearest module around it that ran its own code is. One with a twin is not named: its own row
    would show the error; nor the culprit's own code (nothing changes)."""
    first = diagnosis[0] if diagnosis else None
    if weights is None or first is None or first["kind"] != "missing_op" or not first.get("reads"):
        return found, diagnosis
    reads = set(first["reads"])
    owners = {e.candidate.rpartition(".")[0] or ROOT for e in weights.entries if reads & set(e.reference)}
    if len(owners) != 1:
        return found, diagnosis
    calls = {r.name: r for r in cand_records}
    holder = owners.pop()
    while holder != ROOT and (holder not in calls or _torch_module(candidate, holder)):
        holder = holder.rpartition(".")[0] or ROOT
    if holder == found.culprit and _encloses(first["module"], holder):
        # the culprit search named the holder already; the finding, made on a twin around it (the
        # original adds its table in its root's code), is about the holder's own code
        return found, [{**first, "module": holder, "text": holder + first["text"][len(first["module"]):]}, *diagnosis[1:]]
    if first["module"] != found.culprit or not _encloses(found.culprit, holder) or any(row.candidate == holder for row in rows):
        return found, diagnosis
    moved = {**first, "module": holder, "text": holder + first["text"][len(found.culprit):]}
    early = _before_divergence(found, rows, calls[holder])
    return _culprit_moved(found, holder, holder if early else found.first_divergence), [moved, *diagnosis[1:]]


def _culprit_moved(found: Localization, to: str, first_divergence: str | None = None) -> Localization:
    """``found`` with ``to`` named as the culprit, in the culprit's place among the origins; where the
    outputs first differ: ``first_divergence`` where given, else ``to`` where that was the culprit."""
    culprit = found.culprit
    if first_divergence is None:
        first_divergence = to if found.first_divergence == culprit else found.first_divergence
    return replace(found, culprit=to, first_divergence=first_divergence,
                   introduced=[to if n == culprit else n for n in found.introduced])


def _before_divergence(found: Localization, rows: list[Row], call: Record) -> bool:
    """Whether ``call`` ended before the call where the outputs first differ: done before it, the
    call is where they first differ."""
    first_row = next((row for row in rows if row.candidate == found.first_divergence), None)
    return first_row is not None and call.end < first_row.match.candidate.end


def _maker_named(found: Localization, diagnosis: list[dict], candidate: nn.Module, cand_records: Sequence[Record],
                 rows: list[Row], ref_records: Sequence[Record]) -> Localization:
    """The culprit moved to the call inside it that its first finding is about, where that call
    ran code of the port's own and no twin vouches for it: it has none (a branch adding its
    position table shifted by a row, inside a root whose other calls all have twins), or its twin
    is handed inputs of other shapes, so its row could not tell made from received (a patch
    embedding resizing its image otherwise, where the original resizes before it). The finding
    reads that call's own code: the difference is there, not in the code around it."""
    first = diagnosis[0] if diagnosis else None
    if first is None or found.culprit is None or not _encloses(found.culprit, first["module"]):
        return found
    maker = first["module"]
    call = next((r for r in cand_records if r.name == maker), None)
    if call is None or _torch_module(candidate, maker):
        return found
    own = [row for row in rows if row.candidate == maker]
    if any(row.passed or row.status == "propagated" and row.reran  # re-run, it computed right: received
           or _shaped_alike(row.match.candidate.inputs, row.match.reference.inputs) for row in own):
        return found
    if not _handed_known(call, ref_records, tolerance_for(_first_dtype(call))):
        return found  # what it was handed differs already (a class token joined last, before it)
    return _culprit_moved(found, maker, maker if _before_divergence(found, rows, call) else found.first_divergence)


def _gap_maker(found: Localization, diagnosis: list[dict], candidate: nn.Module, cand_records: Sequence[Record],
               rows: list[Row], ref_records: Sequence[Record]) -> tuple[Localization, list[dict]]:
    """A culprit whose first finding is an operation of its own code, where the first failing call
    inside it received its error (it gives its twin's output from its twin's inputs) and the last
    agreeing call before it and it both run inside one call without a twin, a module of the
    port's own (a cross-attention fusion that lost its residual add, between its attention and
    its output norm, where the original spreads the fusion over three modules): that call's code,
    run between the two, made the error when every value it was handed is one the reference
    computes (in part: a class token sliced off). It is named, and the finding with it."""
    first = diagnosis[0] if diagnosis else None
    culprit = found.culprit
    if first is None or culprit is None or first["module"] != culprit or first["kind"] not in _OWN_CODE_KINDS:
        return found, diagnosis
    bad = next((r for r in rows if r.candidate == found.first_divergence and r.match.how != "structure"), None)
    if bad is None or bad.status != "propagated" or not _encloses(culprit, bad.candidate):
        return found, diagnosis
    failing = bad.match.candidate
    agreeing = [r.match.candidate for r in rows if r.passed and r.match.how != "structure"
                and r.match.candidate.end < failing.start and _encloses(culprit, r.candidate)]
    if not agreeing:
        return found, diagnosis
    last = max(agreeing, key=lambda c: c.end)
    twinned = {r.candidate for r in rows}
    frames = [c for c in cand_records if c.name not in twinned and _encloses(culprit, c.name)
              and c.contains(last) and c.contains(failing) and not _torch_module(candidate, c.name)]
    if not frames:
        return found, diagnosis
    frame = max(frames, key=lambda c: c.start)
    if not _handed_known(frame, ref_records, bad.tolerance):
        return found, diagnosis
    return _named(found, diagnosis, frame.name)


_OWN_CODE_KINDS = ("missing_op", "extra_op", "op")  # findings about the operations a module's code runs


def _arranging_caller(found: Localization, diagnosis: list[dict], candidate: nn.Module, cand_records: Sequence[Record],
                      rows: list[Row], ref_records: Sequence[Record]) -> tuple[Localization, list[dict]]:
    """A culprit that is one of torch's own modules, found only to compute its twin's operation in
    another form (a linear on patch vectors for a strided conv on the map), and handed the very
    values its twin reads, in another shape: torch's code on weights mapped from the twin's cannot
    have made the error, so the values reached it in another order than the twin's weights read
    them. The error is its caller's, whose code arranged them (a patch merge gathering the patch's
    pixels in another channel order), when what the caller was handed is known to the reference.
    Its inputs, of another shape than the twin's, could only be re-run in a layout guessed from
    its own, which takes the wrong order along."""
    culprit = found.culprit
    if culprit is None or not diagnosis or any(f["module"] == culprit and f["kind"] != "op" for f in diagnosis) \
            or diagnosis[0]["module"] != culprit or not _torch_module(candidate, culprit):
        return found, diagnosis
    row = next((r for r in rows if r.candidate == culprit and not r.passed), None)
    if row is None or _shaped_alike(row.match.candidate.inputs, row.match.reference.inputs) \
            or not _same_values(row.match.candidate.first_input, row.match.reference.first_input, row.tolerance):
        return found, diagnosis
    call = row.match.candidate
    callers = [c for c in cand_records if _encloses(c.name, culprit) and c.contains(call)
               and not _torch_module(candidate, c.name)]
    if not callers:
        return found, diagnosis
    caller = max(callers, key=lambda c: c.start)
    if not _handed_known(caller, ref_records, row.tolerance):
        return found, diagnosis
    first = diagnosis[0]
    text = (f"{caller.name}: {culprit} is handed the values its twin {row.match.reference.name} reads, in another "
            f"order than the twin's weights read them: {culprit} runs torch's {first['candidate']} (where the "
            f"reference applies {first['reference']}) on weights mapped from the twin's, so the code of "
            f"{caller.name} that arranges its input (a reshape or permute before it) orders them otherwise")
    moved = {**first, "module": caller.name, "kind": "value", "text": text}
    return _culprit_moved(found, caller.name), [moved, *[f for f in diagnosis if f["module"] != culprit]]


def _same_values(mine: Any, theirs: Any, tol: Tolerance) -> bool:
    """Whether two tensors hold the same values, each in its own order and shape."""
    if not (isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor)) or mine.numel() != theirs.numel() \
            or not mine.is_floating_point() or not theirs.is_floating_point() or mine.numel() == 0:
        return False
    a, b = mine.detach().double().flatten().sort().values, theirs.detach().double().flatten().sort().values
    return bool(((a - b).abs() <= tol.atol + tol.rtol * b.abs().max()).all())


def _named(found: Localization, diagnosis: list[dict], maker: str) -> tuple[Localization, list[dict]]:
    """``maker`` named in the culprit's place (and where the outputs first differ, where that was the
    culprit), and its first finding, about the culprit's code, said of it."""
    culprit, first = found.culprit, diagnosis[0]
    moved = {**first, "module": maker, "text": maker + first["text"][len(culprit):]}
    return _culprit_moved(found, maker), [moved, *diagnosis[1:]]


def _handed_known(call: Record, ref_records: Sequence[Record], tol: Tolerance) -> bool:
    """Whether every tensor ``call`` was handed is a value the reference computes (:func:`_known`)."""
    known = [v for r in ref_records for v in (*r.inputs.values(), *r.outputs.values()) if isinstance(v, torch.Tensor)]
    return all(_known(v, known, tol) for v in call.inputs.values() if isinstance(v, torch.Tensor))


def _first_dtype(call: Record) -> torch.dtype:
    return next((v.dtype for v in call.inputs.values() if isinstance(v, torch.Tensor) and v.is_floating_point()),
                torch.float32)


def _known(value: torch.Tensor, known: Sequence[torch.Tensor], tol: Tolerance) -> bool:
    """Whether ``value`` is one of ``known`` (in any layout), or its first or last part along one dim
    (a class token sliced off the tokens, or the tokens after it)."""
    if not value.is_floating_point() or _holds_any(value, known, tol):
        return True
    for other in known:
        if other.ndim != value.ndim or other.dtype != value.dtype or other.shape == value.shape:
            continue
        dims = [d for d in range(value.ndim) if other.shape[d] != value.shape[d]]
        if len(dims) != 1 or other.shape[dims[0]] < value.shape[dims[0]]:
            continue
        d, n = dims[0], value.shape[dims[0]]
        for part in (other.narrow(d, 0, n), other.narrow(d, other.shape[d] - n, n)):
            if _holds_any(value, [part], tol):
                return True
    return False


def _setting_inside(found: Localization, diagnosis: list[dict], rows: list[Row]) -> Row | None:
    """The row of the twinned call inside the culprit that the culprit's first finding blames for
    a setting (an eps, an approximation), when that call's output differs from its twin's yet
    passed, within its rounding: the error the culprit fails on is that setting's, grown by the
    calls after it (a final norm's eps at float32, amplified by the head)."""
    first = diagnosis[0] if diagnosis else None
    if first is None or first["kind"] not in ("argument", "attribute") or found.culprit is None:
        return None
    if not (_setting_value(first["candidate"]) and _setting_value(first["reference"])):
        return None  # an operand (a tensor passed in another layout) is no setting rounding could hide
    module = first["module"]
    if not _encloses(found.culprit, module):
        return None
    return next((row for row in rows if row.candidate == module and row.passed and row.match.how != "structure"
                 and row.metrics.max_abs > 0), None)


def _setting_value(value: Any) -> bool:
    """Whether a finding's value is a setting's: a number, a flag, a tuple of numbers, or a word
    (an approximation's, a mode's name); a tensor's name comes dotted or qualified ("scale (another
    layout)"), a missing operand as None."""
    if isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, list):
        return bool(value) and all(isinstance(v, (bool, int, float)) for v in value)
    return isinstance(value, str) and value.isidentifier()


def _setting_within_rounding(found: Localization, diagnosis: list[dict], rows: list[Row]) -> tuple[Localization, list[str]]:
    """The culprit moved to the call :func:`_setting_inside` finds, which then is also where the
    outputs first differ, and a note saying why; ``found`` as it is, and no note, without one."""
    row = _setting_inside(found, diagnosis, rows)
    if row is None:
        return found, []
    note = (f"{row.candidate} passes within its tolerance, but differs from its twin in a setting "
            f"({diagnosis[0]['text']}); the error {found.culprit} fails on starts there and grows after it")
    return _culprit_moved(found, row.candidate, row.candidate), [note]


def _encloses(outer: str, inner: str) -> bool:
    """Whether module ``outer`` holds module ``inner`` (not itself)."""
    return inner != outer and (outer == ROOT or inner.startswith(f"{outer}."))


def _torch_module(model: nn.Module, name: str) -> bool:
    """Whether submodule ``name`` is one of torch's own (its code is torch's, not the port's)."""
    try:
        return type(model.get_submodule(name)).__module__.startswith("torch.")
    except AttributeError:
        return False


def _blamed_parts(found: Localization, rows: list[Row], diagnosis: list[dict]) -> tuple[Localization, list[Row]]:
    """An origin that is two calls run as one (a BatchNorm joined with the activation module after
    it, to pair with a norm that applies its activation inside) is named by the part its
    diagnosis blames, when every finding about the pair blames that one part; its row is named
    after the call it measures, its second part's (the pair's output is that call's)."""
    renamed: dict[str, str] = {}
    for at, row in enumerate(rows):
        if row.passed or row.candidate not in found.introduced:
            continue
        chain = row.match.candidate.module
        parts = getattr(chain, "scope_names", None)
        blamed = {f["module"] for f in diagnosis if parts and f["module"] in parts.values()}
        if parts and blamed == {parts["tail"]}:
            renamed[row.candidate] = parts["tail"]
            tail = replace(row.match.candidate, name=parts["tail"], call=int(chain.tail_key.rsplit("#", 1)[1]))
            rows[at] = replace(row, match=replace(row.match, candidate=tail))
    if not renamed:
        return found, rows
    return replace(found, culprit=renamed.get(found.culprit, found.culprit),
                   first_divergence=renamed.get(found.first_divergence, found.first_divergence),
                   introduced=[renamed.get(name, name) for name in found.introduced]), rows


def _spill_notes(spill: Any, *traces: Any) -> list[str]:
    """What ``spill`` did: the bytes the traces kept in files, or why none went there. ``"auto"``
    speaks only when it spilled, or when copies beyond its allowance had to stay in memory."""
    traces = [t for t in traces if isinstance(t, Tracer)]
    if not spill or not traces:
        return []
    folder = spill_folder(spill)
    spilled = sum(t.spilled_bytes for t in traces)
    auto = is_auto_spill(spill)
    notes = []
    if spilled:
        beyond = f" beyond the first {traces[0].spill_allowance / 2**20:.0f} MiB per trace" if auto else ""
        notes.append(f"spill: {spilled / 2**20:.0f} MiB of trace copies{beyond} were kept in files in {folder} and "
                     f"read back as they were measured" + ("; --no-spill (spill=False) keeps them in memory" if auto else ""))
    elif not auto:
        notes.append(f"spill: nothing went to {folder}; only full-mode copies of 1 MiB and more in CPU memory are "
                     f"spilled, the others stay in memory")
    for trace in traces:
        if trace.spill_declined is not None:
            overflow, reason = trace.spill_declined
            notes.append(f"spill: {overflow / 2**20:.0f} MiB of trace copies stayed in memory: {reason}")
    return notes


def _keys_differ(candidate: nn.Module, reference: nn.Module) -> bool:
    """Whether the two models name their parameters differently (so names cannot pair modules)."""
    return {k for k, _ in candidate.named_parameters()} != {k for k, _ in reference.named_parameters()}


def _module_filter(side: str, include: Any, exclude: Any) -> Callable[[str], bool] | None:
    """A predicate on module names from the include/exclude regexes for one side (None: all)."""

    def pick(option: str, value: Any) -> Callable[[str], bool] | None:
        if isinstance(value, Mapping) and set(value) <= {"candidate", "reference"}:
            value = value.get(side)
        elif value is not None and not isinstance(value, str):
            raise type_error(option, value, "a regex string or a dict {'candidate': regex, 'reference': regex}")
        return name_filter(value, option=option)

    inc, exc = pick("include", include), pick("exclude", exclude)
    if inc is None and exc is None:
        return None
    return lambda name: (inc is None or inc(name)) and (exc is None or not exc(name))


def _verdict(
    final: list[tuple[str, torch.Tensor, torch.Tensor]],
    outputs: Mapping[str, Metrics],
    rows: list[Row],
    tol: Tolerance,
    allow_nonfinite: bool,
    rerun: Sequence[str] | None,
    untwinned: Sequence = (),
    output_passed: bool | None = None,
    reference: Sequence = (),
    summary: bool = False,
) -> tuple[bool, Localization, list[str]]:
    """(passed, where the error is, notes) from the final outputs and the aligned rows (``summary``:
    the layers were recorded as statistics)."""
    notes: list[str] = []
    nonfinite = sorted(k for k, a, b in final if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())))
    notes += guards.nonfinite_notes(final, outputs, allow_nonfinite)
    outputs_pass = all(m.passes(tol) for m in outputs.values()) if output_passed is None else output_passed
    outputs_pass = outputs_pass and (allow_nonfinite or not nonfinite)
    confirmed = [r for r in rows if r.match.how != "structure" and not r.passed]
    unrelated = [r for r in confirmed if _shapes_unrelated(r)]
    reordered = [r for r in confirmed if r not in unrelated and outputs_pass and _values_reordered(r)]
    if not (outputs_pass and len(unrelated) + len(reordered) == len(confirmed)):
        found = localize_all(rows, rerun=rerun, untwinned=untwinned, reference=reference)
        if found.culprit is None:
            found = _search_diluted(rows, found, lambda: localize_all(rows, rerun=rerun, untwinned=untwinned,
                                                                      reference=reference))
        only_nonfinite = nonfinite and all(m.passes(tol) for m in outputs.values()) and all(r.passed for r in rows)
        if found.culprit is None and not only_nonfinite:  # agreeing NaN/Inf alone: their note says why it fails
            notes.append(_unlocalized_note(confirmed, untwinned, summary, output_passed is not None))
        return False, found, notes + found.notes
    # The outputs agree, and so does every layer paired by name or weights whose values can be
    # compared in one order: a failing structural pairing is a guess that was wrong, twins whose
    # outputs no layout relates hold no evidence either way (a norm on other tokens than its twin's),
    # and twins holding the same values in another order compute the same function in another
    # arrangement that their consumers undo (patches unfolded from the transposed map, folded back
    # transposed). None fails the run; all stay visible, the confirmed twins named first.
    tentative = [r for r in rows if not r.passed]
    for row in tentative:
        row.status = "tentative"
    if unrelated:
        notes.append(_unrelated_note(unrelated))
    if reordered:
        listed = ", ".join(r.key for r in reordered[:5]) + (", ..." if len(reordered) > 5 else "")
        notes.append(f"{len(reordered)} twin row(s) hold the reference's values in another order (the same elements, "
                     f"rearranged within their shape): {listed}; the final outputs agree, so what reads them undoes the "
                     f"arrangement (an equivalent rewrite), and they do not fail the run")
    guesses = [r for r in tentative if r.match.how == "structure"]
    if guesses:
        notes.append(f"{len(guesses)} structurally paired rows differ (tentative pairings by shape, "
                     f"not counted): {', '.join(r.key for r in guesses[:5])}")
    return True, Localization(), notes


def _unlocalized_note(failing: Sequence[Row], untwinned: Sequence, summary: bool, floor: bool) -> str:
    """Why no culprit is named, and what would name one: twins that fail without one making the
    error point at code without a twin; twins that all pass while the outputs fail mean the error
    is below the layers' tolerances (judged by rounding, the outputs are held to a stricter bound)."""
    unmatched = ", ".join(dict.fromkeys(r.name for r in untwinned[:5]))
    if failing:
        return ("no confirmed twin introduces the error: twins fail, but each received its error; "
                + (f"compare the modules without a twin ({unmatched})" if unmatched else
                   "it is made by code outside the paired modules"))
    judged = ", in summary mode judged on statistics (mean, std, absmax)" if summary else ""
    held = " against the reference's own rounding" if floor else ""
    advice = "compare at float64 (dtype=torch.float64)" + (" or in full mode (mode='full')" if summary else "")
    return (f"no twin fails: every twinned layer is within its tolerance{judged}, while the outputs fail{held}: "
            f"the error is too small for the layers' tolerances to show; to localize it, {advice}"
            + (f"; modules without a twin ({unmatched}) could hold it too" if unmatched else ""))


def _search_diluted(rows: list[Row], found: Localization, search: Callable[[], Localization]) -> Localization:
    """A failing twin judged beyond its rounding floor that received its error, inside a twin
    judged within its floor: the error was made inside that outer twin by code without a twin of
    its own (a tanh GELU between two paired convolutions), and its effect, added to a residual and
    scaled by a layer scale, is as small as the outer twin's rounding. Judged against the floor of
    its own computation when re-run on the reference's inputs, that twin does fail: the search is
    made again with it counted as failing, and kept when it names a culprit."""
    failing = [r for r in rows if not r.passed and r.noise is not None and r.match.how != "structure"]
    outer = {}
    for child in failing:
        around = [r for r in rows if r.passed and r.noise is not None and r.match.how != "structure"
                  and r.rerun_judge is not None and r.match.candidate.contains(child.match.candidate)]
        if around:
            parent = min(around, key=lambda r: r.match.candidate.end - r.match.candidate.start)
            outer[id(parent)] = (parent, child)
    if not outer:
        return found
    saved = {id(r): dict(vars(r)) for r in rows}
    for parent, _ in outer.values():
        parent.passed = False
    again = search()
    if again.culprit is None:
        for r in rows:
            vars(r).update(saved[id(r)])
        return found
    again.notes.append("; ".join(f"{parent.key} is within its rounding floor but holds {child.key}, which fails "
                                 f"beyond its own with an error received from inside {parent.key}: searched as failing"
                                 for parent, child in outer.values()))
    return again


def _shapes_unrelated(row: Row) -> bool:
    """Whether ``row`` fails only because its twins' outputs have shapes that no layout adapter or
    position relates: nothing was compared, so its values are no evidence of an error."""
    return row.metrics.shape_mismatch and not row.metrics.nonfinite_mismatch and row.adapter is None


def _values_reordered(row: Row) -> bool:
    """Whether each output leaf of ``row``'s candidate holds its twin's elements in another order,
    and that order is what fails: sorted, the two agree (within the row's tolerance, and within
    the rounding floor where the row was judged by it), and far better than as they are. Rounding
    moves a value less than the gap that could swap it with its neighbour in the sorted order; a
    change of values (a tanh GELU) leaves the sorted tensors as far apart as the tensors."""
    pairs = _leaf_pairs(row.match.candidate.outputs, row.match.reference.outputs)
    if not pairs or not all(isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.numel() == b.numel()
                            and a.is_floating_point() and b.is_floating_point() for _, a, b in pairs):
        return False
    for _, a, b in pairs:
        sorted_ = measure(*(t.detach().flatten().sort().values for t in (a, b)))
        # the row's own measurement (in the layout it was compared in) is the error as they are
        if not (sorted_.passes(row.tolerance) and sorted_.max_abs <= 0.5 * row.metrics.max_abs):
            return False
        rounding = None if row.noise is None else ratio_divisor(row.noise.floor, str(a.dtype).removeprefix("torch."))
        if rounding is not None and sorted_.rel_l2 > row.noise.threshold * rounding:
            return False
    return True


def _unrelated_note(rows: Sequence[Row]) -> str:
    def shapes(row: Row) -> str:
        cand = "x".join(map(str, row.match.candidate.shape or ())) or "-"
        ref = "x".join(map(str, row.reference_shape or ())) or "-"
        return f"{row.key} ({cand} against {row.reference}'s {ref})"

    listed = ", ".join(shapes(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
    return (f"not checked: {len(rows)} twin row(s) paired by {' and '.join(sorted({r.match.how for r in rows}))} "
            f"return outputs of shapes that no layout or position relates, so their values were never compared: "
            f"{listed}; the final outputs agree, so they do not fail the run, but nothing vouches for these modules "
            f"on their own (a module run on other tokens than its twin? adapters= compares them)")


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
    against exactly the weights it started from. Otherwise both sides are built with one copy of
    the weights (``share_weights=True``), and on separate copies again if a forward wrote into it.
    ``overrides``: fields of :class:`harness.CompareOptions` (``mode="summary"``,
    ``tolerances=...``), replacing what the pair declares.
    """
    pair = as_pair(pair)
    if candidate is not None:
        check_module("candidate", candidate)
    call = pair.inputs(dtype=dtype, device=device) if inputs is None else as_call(inputs).to(dtype, device)
    options = pair.options.replace(**overrides)

    def judge(candidate: nn.Module, reference: nn.Module) -> ParityReport:
        return compare(candidate, reference, call, dtype=dtype, pair_name=pair.name, **options.to_kwargs())

    progress.stage("build", f"{pair.name} {dtype_name(dtype)}")
    if candidate is not None:
        return judge(candidate, pair.build_reference(dtype=dtype, device=device))
    # The comparison owns both models: one copy of the weights serves both. A forward that writes
    # into a weight would then change it for the other side too and hide the difference it makes,
    # so such a comparison is made again on separate copies (the shared counter of the two views
    # moves whichever side wrote). Tensors made under inference mode have no version counter to
    # show a write: there the copies are separate from the start.
    share = not torch.is_inference_mode_enabled()
    candidate, reference = pair.build(dtype=dtype, device=device, share_weights=share)
    versions = [p._version for p in candidate.parameters()] if share else []
    report = judge(candidate, reference)
    if not share or all(p._version == v for p, v in zip(candidate.parameters(), versions)):
        return report
    progress.stage("build", f"{pair.name} {dtype_name(dtype)}: a forward wrote into the shared weights, separate copies")
    return judge(*pair.build(dtype=dtype, device=device))
