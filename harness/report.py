"""ParityReport: the result of one comparison, as JSON, a terminal table and an HTML page.

The JSON layout is a contract (ARCHITECTURE.md): fields may be added, never renamed::

    {"schema": 1, "environment": {...}, "results": [{"pair", "dtype", "device", "passed",
     "first_divergence", "culprit", "output": {"max_abs", "max_rel", "rel_l2", "cosine"},
     "layers": [{"candidate", "reference", "call", "shape", "max_abs", "rel_l2", "passed"}, ...],
     "unmatched": {"candidate": [...], "reference": [...]}, "seconds"}]}
"""

from __future__ import annotations

import html
import json
import os
import platform
import sys
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import torch

from harness.localize import Row
from harness.metrics import Metrics, Tolerance

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

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "pair": self.pair,
            "dtype": self.dtype,
            "device": self.device,
            "passed": self.passed,
            "first_divergence": self.first_divergence,
            "culprit": self.culprit,
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
            "counts": {
                "aligned": len(self.rows),
                "failed": sum(not r.passed for r in self.rows),
                "by_name": sum(r.match.how == "name" for r in self.rows),
                "by_rename": sum(r.match.how == "rename" for r in self.rows),
                "by_structure": sum(r.match.how == "structure" for r in self.rows),
            },
        }

    # -- terminal --------------------------------------------------------------------------------
    def verdict(self) -> str:
        name = self.pair or "comparison"
        o = self.output
        head = (f"{name} [{self.dtype}, {self.device}]: {'PASS' if self.passed else 'FAIL'} -- "
                f"output max_abs={o.max_abs:.3e} max_rel={o.max_rel:.3e} rel_l2={o.rel_l2:.3e} "
                f"cosine={o.cosine:.12f} (tolerance atol={self.tolerance.atol:g} rtol={self.tolerance.rtol:g})")
        lines = [head]
        if not self.passed:
            lines.append(f"first divergence: {self.first_divergence or '(none in aligned layers)'}")
            lines.append(f"culprit (introduces the error itself): {self.culprit or '(not localized)'}")
        if self.first_nonfinite.get("candidate") or self.first_nonfinite.get("reference"):
            lines.append(f"first NaN/Inf: candidate {self.first_nonfinite.get('candidate')}, "
                         f"reference {self.first_nonfinite.get('reference')}")
        lines += [f"note: {note}" for note in self.notes]
        passthrough = len(self.passthrough_candidate) + len(self.passthrough_reference)
        lines.append(f"{len(self.rows)} aligned calls ({sum(not r.passed for r in self.rows)} failing); "
                     f"unmatched: {len(self.unmatched_candidate)} candidate, {len(self.unmatched_reference)} reference"
                     + (f"; {passthrough} pass-through calls (Identity, eval Dropout) without a twin" if passthrough else ""))
        return "\n".join(lines)

    def format(self, *, max_rows: int = 24) -> str:
        """Verdict plus the rows that matter: around the first divergence, then the worst ones."""
        selected = _select_rows(self.rows, self.first_divergence, max_rows)
        table = _table(self.rows, selected)
        parts = [self.verdict(), table]
        for side, names in (("candidate", self.unmatched_candidate), ("reference", self.unmatched_reference)):
            if names:
                shown = ", ".join(names[:8]) + (f", ... (+{len(names) - 8})" if len(names) > 8 else "")
                parts.append(f"unmatched {side} calls: {shown}")
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.format()


def _row_dict(r: Row) -> dict[str, Any]:
    m = r.metrics.to_dict()
    shape = r.match.candidate.shape
    return {
        "candidate": r.candidate, "reference": r.reference, "call": r.call,
        "shape": list(shape) if shape is not None else None,
        "max_abs": m["max_abs"], "rel_l2": m["rel_l2"], "passed": r.passed,
        "max_rel": m["max_rel"], "cosine": m["cosine"], "status": r.status,
        "match": r.match.how, "leaf": r.leaf, "reran": r.reran,
    }


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
        status = ("ok" if r.passed else r.status) + ("*" if r.reran else "")
        ref = r.reference if r.reference != r.candidate else "="
        lines.append((str(i), r.key, ref, shape, _fmt(r.metrics.max_abs), _fmt(r.metrics.rel_l2),
                      f"{r.metrics.cosine:.9f}" if r.metrics.cosine == r.metrics.cosine else "nan", status))
        previous = i
    if not lines:
        return "(no aligned calls)"
    widths = [min(max(len(row[c]) for row in [header, *lines]), 48) for c in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(_clip(v, w).ljust(w) for v, w in zip(row, widths)) for row in lines]
    if len(indices) < len(rows):
        out.append(f"({len(indices)} of {len(rows)} rows shown: around the first divergence and the worst; "
                   f"'*' = re-run on reference inputs)")
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


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    # O_EXCL on a fresh name, mode 0666 less the umask: reports are read by dashboards and people
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def document(results: Iterable[dict[str, Any]], *, device: str = "cpu") -> dict[str, Any]:
    """The report JSON document (schema 1) for result dicts (``ParityReport.to_dict()``)."""
    return {"schema": SCHEMA, "environment": environment(device), "results": list(results)}


def write_json(path: str | os.PathLike, results: Iterable[dict[str, Any]], *, device: str = "cpu") -> Path:
    return atomic_write_text(path, json.dumps(document(results, device=device), indent=1, allow_nan=False))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Parity report</title>
<style>
body{{font:14px system-ui,sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} th{{background:#f3f3f3}}
.pass{{color:#176b2c;font-weight:600}} .fail{{color:#b00020;font-weight:600}} code{{font-size:13px}}
td.num{{text-align:right;font-family:monospace}}
</style></head><body>
<h1>Parity report</h1>
<p>{summary}</p>
<p><small>{env}</small></p>
<table><thead><tr><th>pair</th><th>dtype</th><th>verdict</th><th>output max_abs</th><th>max_rel</th>
<th>rel_l2</th><th>cosine</th><th>layers (failing)</th><th>first divergence</th><th>culprit</th>
<th>unmatched cand/ref</th><th>seconds</th></tr></thead>
<tbody>
{rows}
</tbody></table></body></html>
"""


def write_html(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """One row per pair and dtype: verdict, errors, first divergence, culprit."""
    esc = html.escape
    rows = []
    results = sorted(doc["results"], key=lambda r: (str(r["pair"]), r["dtype"]))
    for r in results:
        o = r["output"]
        failing = sum(not layer["passed"] for layer in r["layers"])
        verdict = '<span class="pass">PASS</span>' if r["passed"] else '<span class="fail">FAIL</span>'
        cells = [
            f"<td>{esc(str(r['pair']))}</td>", f"<td>{esc(r['dtype'])}</td>", f"<td>{verdict}</td>",
            *(f'<td class="num">{_num(o[k])}</td>' for k in ("max_abs", "max_rel", "rel_l2")),
            f'<td class="num">{esc(str(o["cosine"]))}</td>',
            f'<td class="num">{len(r["layers"])} ({failing})</td>',
            f"<td><code>{esc(r['first_divergence'] or '-')}</code></td>",
            f"<td><code>{esc(r['culprit'] or '-')}</code></td>",
            f'<td class="num">{len(r["unmatched"]["candidate"])}/{len(r["unmatched"]["reference"])}</td>',
            f'<td class="num">{r["seconds"]:.2f}</td>',
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    passed = sum(r["passed"] for r in results)
    env = doc.get("environment", {})
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
    page = _PAGE.format(
        summary=f"{passed} of {len(results)} comparisons pass.",
        env=esc(f"{versions}; device {env.get('device')}; threads {env.get('threads')}"),
        rows="\n".join(rows),
    )
    return atomic_write_text(path, page)


def _num(v: Any) -> str:
    return f"{v:.3e}" if isinstance(v, (int, float)) else html.escape(str(v))
