"""ParityReport: the result of one comparison, as JSON and a terminal table (HTML pages: harness.pages).

The JSON layout is a contract (docs/architecture.md): fields may be added, never renamed::

    {"schema": 1, "environment": {...}, "results": [{"pair", "dtype", "device", "passed",
     "first_divergence", "culprit", "output": {"max_abs", "max_rel", "rel_l2", "cosine"},
     "layers": [{"candidate", "reference", "call", "shape", "max_abs", "rel_l2", "passed"}, ...],
     "unmatched": {"candidate": [...], "reference": [...]}, "seconds"}]}

``"culprit_call"`` says which call of the culprit made the error when its module ran more than once.
A failing result also explains its culprit (``"diagnosis"``: findings of :mod:`harness.diagnose`,
the first one printed as the ``why:`` line) and counts its failing elements per row
(``mismatched``, ``mismatched_share``, ``worst_index``, ``allowed``; the output also gets the
``passing_rtol``/``passing_atol`` that would have passed). ``"noise_floor"`` and each layer's
``"noise"``/``"passed_tolerance"`` give the rounding-aware verdict next to atol/rtol (:mod:`harness.noise`).
``"nondeterministic"`` names the sides whose second run differed (:mod:`harness.guards`); their
diagnosis keeps only settings, and the ``why:`` line says so where none is left. With several final
outputs, the text names the one whose numbers it prints.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import torch

from harness.files import atomic_write_text  # re-exported: harness.report.atomic_write_text is public
from harness.localize import Row
from harness.metrics import Metrics, Tolerance
from harness.noise import ratio_divisor
from harness.runs import STATUS_LEGEND

__all__ = ["ParityReport", "environment", "write_json", "write_html", "atomic_write_text", "SCHEMA"]

SCHEMA = 1


@dataclass
class ParityReport:
    pair: str | None
    dtype: str
    device: str
    passed: bool
    first_divergence: str | None
    culprit: str | None
    output: Metrics
    outputs: dict[str, Metrics]
    rows: list[Row]
    unmatched_candidate: list[str]
    unmatched_reference: list[str]
    tolerance: Tolerance
    seconds: float
    first_nonfinite: dict[str, str | None] = field(default_factory=dict)
    passthrough_candidate: list[str] = field(default_factory=list)
    passthrough_reference: list[str] = field(default_factory=list)
    input_mutations: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    mode: str = "full"
    introduced: list[str] = field(default_factory=list)  # every origin of an error, in execution order
    weight_coverage: float | None = None  # when modules were paired through a weight map
    diagnosis: list = field(default_factory=list)  # what the error is (harness.diagnose), most specific first
    noise_floor: dict = field(default_factory=dict)  # harness.noise.NoiseVerdicts.to_dict()
    backward: Any = None  # harness.backward.BackwardResult with compare(..., backward=True), else None
    nondeterministic: list[str] = field(default_factory=list)  # sides whose two runs differ (harness.guards)

    @property
    def culprit_call(self) -> int | None:
        """Which call of the culprit made the error (0 for the first), when its module ran more than
        once (a shared module, a block run per frame); None otherwise."""
        calls = [r for r in self.rows if r.candidate == self.culprit]
        if len({r.match.candidate.call for r in calls}) < 2:
            return None
        made = next((r for r in calls if r.status == "introduced"), None) or next((r for r in calls if not r.passed), None)
        return None if made is None else made.match.candidate.call

    @property
    def output_key(self) -> str | None:
        """The key in ``outputs`` of the output that ``output`` measures (the worst)."""
        keys = [k for k, m in self.outputs.items() if m is self.output] or \
            [k for k, m in self.outputs.items() if m == self.output]
        return keys[0] if keys else None

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        backward = {} if self.backward is None else {"backward": self.backward.to_dict()}
        return {
            "pair": self.pair,
            "dtype": self.dtype,
            "device": self.device,
            "passed": self.passed,
            "first_divergence": self.first_divergence,
            "culprit": self.culprit,
            "culprit_call": self.culprit_call,
            "output": self.output.to_dict(),
            "outputs": {k: m.to_dict() for k, m in self.outputs.items()},
            "layers": [_row_dict(r) for r in self.rows],
            "unmatched": {"candidate": self.unmatched_candidate, "reference": self.unmatched_reference},
            "passthrough": {"candidate": self.passthrough_candidate, "reference": self.passthrough_reference},
            "seconds": round(self.seconds, 4),
            "tolerance": {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol},
            "first_nonfinite": self.first_nonfinite,
            "input_mutations": self.input_mutations,
            "mode": self.mode,
            "notes": self.notes,
            "introduced": self.introduced,
            "weight_coverage": self.weight_coverage,
            "diagnosis": self.diagnosis,
            "noise_floor": self.noise_floor,
            "nondeterministic": self.nondeterministic,
            "counts": {
                "aligned": len(self.rows),
                "failed": sum(not r.passed for r in self.rows),
                "by_name": sum(r.match.how == "name" for r in self.rows),
                "by_weights": sum(r.match.how == "weights" for r in self.rows),
                "by_rename": sum(r.match.how == "rename" for r in self.rows),
                "by_structure": sum(r.match.how == "structure" for r in self.rows),
            },
            **backward,
        }

    # -- terminal --------------------------------------------------------------------------------
    def verdict(self) -> str:
        name = self.pair or "comparison"
        o = self.output
        measured = ("output shapes differ (see the note)" if o.shape_mismatch else
                    f"output max_abs={o.max_abs:.3e} max_rel={o.max_rel:.3e} rel_l2={o.rel_l2:.3e} cosine={o.cosine:.12f}")
        head = (f"{name} [{self.dtype}, {self.device}]: {'PASS' if self.passed else 'FAIL'} -- {measured}"
                + (f" nonfinite_mismatch={o.nonfinite_mismatch}" if o.nonfinite_mismatch else "")
                + f" (tolerance atol={self.tolerance.atol:g} rtol={self.tolerance.rtol:g})")
        lines = [head]
        backward_only = self.backward is not None and not self.backward.passed and self.culprit is None \
            and all(r.passed for r in self.rows) and all(m.passes(self.tolerance) for m in self.outputs.values())
        if backward_only:
            lines.append(f"forward: every aligned call and output agrees; the backward does not (backward culprit: "
                         f"{self.backward.culprit or 'not localized'}, below)")
        elif not self.passed:
            lines.append(f"first divergence: {self.first_divergence or '(none in aligned layers)'}")
            call = self.culprit_call
            lines.append(f"culprit (introduces the error itself): {self.culprit or '(not localized)'}"
                         + (f" (its call #{call})" if call is not None else ""))
            if len(self.introduced) > 1:
                lines.append(f"errors introduced independently at: {', '.join(self.introduced)}")
            if self.diagnosis:
                lines.append(f"why: {self.diagnosis[0]['text']}")
            elif self.nondeterministic:
                lines.append(f"why: not decided: {_sides(self.nondeterministic)} not deterministic (see the notes): "
                             f"the values compared differ by random draws, so no operation is blamed")
            if o.passing_rtol is not None and not o.passes(self.tolerance):
                which = f" {self.output_key!r}" if len(self.outputs) > 1 else ""
                lines.append(f"output{which}: {o.mismatched} elements ({_share(o.mismatched_share)}) beyond the bound "
                             f"{o.allowed:.3e}, worst at {list(o.worst_index or ())}; it would pass with rtol >= "
                             f"{o.passing_rtol:.3e} (atol {self.tolerance.atol:g}) or atol >= {o.passing_atol:.3e} (rtol 0)")
        lines += _noise_lines(self.noise_floor, self.dtype)
        lines += self.backward.lines() if self.backward is not None else []
        if self.first_nonfinite.get("candidate") or self.first_nonfinite.get("reference"):
            lines.append(f"first NaN/Inf: candidate {self.first_nonfinite.get('candidate')}, "
                         f"reference {self.first_nonfinite.get('reference')}")
        lines += [f"note: {note}" for note in self.notes]
        passthrough = len(self.passthrough_candidate) + len(self.passthrough_reference)
        # in a passing run every disagreeing row is tentative (not counted): say so, not "failing"
        count = sum(not r.passed for r in self.rows)
        disagreeing = f"{count} {'tentative' if self.passed and count else 'failing'}"
        lines.append(f"{len(self.rows)} aligned calls ({disagreeing}); "
                     f"unmatched: {len(self.unmatched_candidate)} candidate, {len(self.unmatched_reference)} reference"
                     + (f"; {passthrough} pass-through calls (Identity, eval Dropout) without a twin" if passthrough else ""))
        return "\n".join(lines)

    def format(self, *, max_rows: int = 24, table: bool | None = None) -> str:
        """Verdict plus the rows that matter: around the first divergence, then the worst ones.

        A passing report shows the verdict and its closest call to the bound instead of a table of
        agreeing rows, unless ``table=True``.
        """
        if table is None:
            table = not self.passed
        if not table:
            return "\n".join([self.verdict(), _closest(self.rows)])
        selected = _select_rows(self.rows, self.first_divergence, max_rows)
        parts = [self.verdict(), _table(self.rows, selected)]
        for side, names in (("candidate", self.unmatched_candidate), ("reference", self.unmatched_reference)):
            if names:
                shown = ", ".join(names[:8]) + (f", ... (+{len(names) - 8})" if len(names) > 8 else "")
                parts.append(f"unmatched {side} calls: {shown}")
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.format()

    def __repr__(self) -> str:
        # one line: the full report (thousands of rows with tensors behind them) belongs in format()
        failing = sum(not r.passed for r in self.rows)
        where = f" culprit={self.culprit!r} first_divergence={self.first_divergence!r}" if not self.passed else ""
        return (f"<ParityReport {self.pair or 'comparison'} {self.dtype} {self.device} "
                f"{'PASS' if self.passed else 'FAIL'}{where} output_rel_l2={self.output.rel_l2:.3g} "
                f"layers={len(self.rows)} failing={failing}>")


def _row_dict(r: Row) -> dict[str, Any]:
    m = r.metrics.to_dict()
    shape = r.match.candidate.shape
    return {
        "candidate": r.candidate, "reference": r.reference, "call": r.call,
        "shape": list(shape) if shape is not None else None,
        "max_abs": m["max_abs"], "rel_l2": m["rel_l2"], "passed": r.passed,
        "max_rel": m["max_rel"], "cosine": m["cosine"], "status": r.status,
        "match": r.match.how, "leaf": r.leaf, "reran": r.reran,
        "reference_shape": list(r.reference_shape) if r.reference_shape is not None else None,
        "adapter": r.adapter, "shape_mismatch": r.metrics.shape_mismatch,
        "noise": r.noise.to_dict() if r.noise is not None else None, "passed_tolerance": r.passed_tolerance,
        **{k: m[k] for k in ("mismatched", "mismatched_share", "worst_index", "allowed") if m.get(k) is not None},
    }


def _sides(sides: list[str]) -> str:
    return f"the {sides[0]} is" if len(sides) == 1 else f"the {' and the '.join(sides)} are"


def _share(share: float | None) -> str:
    return "?" if share is None else f"{share:.2%}"


def _noise_lines(noise: dict, dtype: str) -> list[str]:
    """The noise-floor verdict next to the atol/rtol one (harness.noise)."""
    if not noise.get("enabled"):
        return []
    outs = noise.get("outputs") or {}
    if not outs:
        return []
    worst = max(outs.values(), key=lambda j: float(j["ratio"]))
    if math.isnan(float(worst["error"])) and worst["passed"]:  # bitwise the reference's (harness.noise)
        return [f"noise floor: output error at most 1x the reference's own {dtype} rounding (bitwise the "
                f"reference's outputs, no float64 run needed; threshold {noise['threshold']:g}x): within rounding"]
    floor, error = float(worst["floor"]), float(worst["error"])
    # a ratio of 0 or infinity is the same whatever it divides by: no divisor worth naming; a floor
    # within rounding of the unit roundoff prints as it, so raising it is not worth naming either
    divisor = ratio_divisor(floor, dtype) if float(worst["ratio"]) not in (0.0, math.inf) else floor
    raised = f", raised to the unit roundoff {divisor:.3e}" if divisor > floor * (1 + 1e-9) else ""
    return [f"noise floor: output error {float(worst['ratio']):.3g}x the reference's own {dtype} rounding "
            f"(error {error:.3e}, floor {floor:.3e}{raised}; relative L2 against a float64 "
            f"run; threshold {noise['threshold']:g}x): {'within' if worst['passed'] else 'beyond'} rounding"]


def _select_rows(rows: list[Row], first: str | None, limit: int) -> list[int]:
    if len(rows) <= limit:
        return list(range(len(rows)))
    chosen: set[int] = set()
    if first is not None:
        at = next(i for i, r in enumerate(rows) if not r.passed)
        chosen.update(range(max(0, at - 3), min(len(rows), at + limit // 2)))
    by_badness = sorted(range(len(rows)), key=lambda i: -_badness(rows[i]))
    for i in by_badness:
        if len(chosen) >= limit:
            break
        chosen.add(i)
    return sorted(chosen)


def _badness(r: Row) -> float:
    m = r.metrics
    if m.shape_mismatch or m.nonfinite_mismatch:
        return float("inf")
    bound = r.tolerance.bound(m.ref_absmax)
    return m.max_abs / bound if bound > 0 else m.max_abs


def _closest(rows: list[Row]) -> str:
    """One line for a passing report: how many calls agree and which came closest to its bound."""
    if not rows:
        return "(no aligned calls)"
    # rows a passing run does not count (tentative: a shape-only guess, twins whose shapes nothing
    # relates, the same values in another order) are no calls "within tolerance"; the notes say why
    aside_rows = [r for r in rows if not r.passed]
    rows = [r for r in rows if r.passed]
    aside = f" ({len(aside_rows)} tentative row(s) not counted: see the notes)" if aside_rows else ""
    if not rows:
        return f"(no aligned call counted){aside}"
    worst = max(rows, key=_badness)
    if _badness(worst) == 0:
        return f"all {len(rows)} aligned calls agree exactly{aside}"
    # rows passed by a rounding verdict (harness.noise, a float32 operation kept in float64) are beyond atol/rtol
    rounded = sum(r.passed_tolerance is False for r in rows)
    within = f"pass ({rounded} beyond atol/rtol, within the rounding the notes name)" if rounded else "within tolerance"
    return (f"all {len(rows)} aligned calls {within}; closest to its bound: {worst.key} "
            f"(max_abs {_fmt(worst.metrics.max_abs)}, {_badness(worst):.2g} of the bound){aside}")


def _legend(statuses: set[str]) -> str:
    shown = [k for k in STATUS_LEGEND if k in statuses and k != "ok"]
    return "\n".join(["statuses:"] + [f"  {k:<10}  {STATUS_LEGEND[k]}" for k in shown]) if shown else ""


def _fmt(v: float) -> str:
    return f"{v:.2e}" if v == v else "nan"


def _table(rows: list[Row], indices: list[int]) -> str:
    header = ("#", "candidate", "reference", "shape", "max_abs", "rel_l2", "cosine", "status")
    lines = []
    previous = -1
    for i in indices:
        if previous >= 0 and i != previous + 1:
            lines.append(("...",) + ("",) * (len(header) - 1))
        r = rows[i]
        shape = "x".join(map(str, r.match.candidate.shape or ())) or "-"
        if r.reference_shape is not None:  # twins in different layouts: both shapes, and the adapter
            shape += " vs " + "x".join(map(str, r.reference_shape)) + (f" [{r.adapter}]" if r.adapter else " [no adapter]")
        status = ("ok" if r.passed else r.status) + ("*" if r.reran else "")
        ref = r.reference if r.reference != r.candidate else "="
        lines.append((str(i), r.key, ref, shape, _fmt(r.metrics.max_abs), _fmt(r.metrics.rel_l2),
                      f"{r.metrics.cosine:.9f}" if r.metrics.cosine == r.metrics.cosine else "nan", status))
        previous = i
    if not lines:
        return "(no aligned calls)"
    widths = [min(max(len(row[c]) for row in [header, *lines]), 64 if c == 3 else 48) for c in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(_clip(v, w).ljust(w) for v, w in zip(row, widths)) for row in lines]
    if len(indices) < len(rows):
        out.append(f"({len(indices)} of {len(rows)} rows shown: around the first divergence and the worst)")
    statuses = {row[-1].rstrip("*") for row in lines} | ({"*"} if any(row[-1].endswith("*") for row in lines) else set())
    if legend := _legend(statuses):
        out.append(legend)
    return "\n".join(out)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


# -- environment and files ------------------------------------------------------------------------
def environment(device: str = "cpu") -> dict[str, Any]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("timm", "transformers", "numpy", "safetensors"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "versions": versions,
        "device": device,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "argv": sys.argv[:1],
    }


def document(results: Iterable[dict[str, Any]], *, device: str = "cpu") -> dict[str, Any]:
    """The report JSON document (schema 1) for result dicts (``ParityReport.to_dict()``)."""
    return {"schema": SCHEMA, "environment": environment(device), "results": list(results)}


def write_json(path: str | os.PathLike, results: Iterable[dict[str, Any]], *, device: str = "cpu") -> Path:
    return atomic_write_text(path, json.dumps(document(results, device=device), indent=1, allow_nan=False))


def write_html(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """The report's index page (harness.pages: failures grouped by culprit, links to pair pages)."""
    from harness.pages import write_index

    return write_index(path, doc)
