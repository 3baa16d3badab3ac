"""Reports that accumulate over runs: result keys, run stamps, merging, history and diffs.

A report document (``reports/parity.json``, schema 1) holds one result per key
``(test, pair, dtype)``. Every result carries the stamp of the run that produced it
(``{"id", "time", "commit", "selection", "shard", "partial", "why_partial"}``); the document lists
those runs under ``"runs"``. Merging is a keyed union in which the newer run wins, so a run of two
selections, or several CI shards, leave one document that holds every result once.

``history.jsonl`` gets one line per reporting run (or per merge of shards): the run stamp, counts
and, per result, the few numbers a dashboard plots (output error, time, status, culprit).
Regressions compare each key's latest result with its previous one: newly failing (a pass became
a failure or an error), or an output error grown more than ``GROWTH`` times while still passing.

Nothing here imports torch or a model: this module reads and writes plain JSON.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from harness.checks import one_line

__all__ = [
    "GROWTH", "STATUS_LEGEND", "Key", "key", "status", "run_stamp", "commit_of", "load_document", "merge_results", "merge_documents",
    "history_entry", "append_history", "read_history", "regressions", "diff_documents", "shard_of",
    "parse_shard",
]

# What each per-layer status means (the terminal table's footer and the HTML pages).
STATUS_LEGEND: dict[str, str] = {
    "ok": "within tolerance",
    "introduced": "makes the error itself: its inputs agree with the reference, its output does not",
    "contains": "fails because a module nested inside it introduces the error",
    "propagated": "fails only because it received an error from an earlier module",
    "tentative": "paired by shape only and differs (a guess), or twins of shapes nothing relates in a run whose "
                 "outputs agree (unchecked); not counted against the verdict",
    "*": "re-run on the reference's recorded inputs to decide between made and received",
}
GROWTH = 10.0  # an output error grown more than this many times while passing is a regression

Key = tuple[str, str, str]


def key(result: dict[str, Any]) -> Key:
    """The identity of a result across runs: (test node id, pair, dtype); '' where unknown."""
    return (str(result.get("test") or ""), str(result.get("pair") or ""), str(result.get("dtype") or ""))


def status(result: dict[str, Any]) -> str:
    """'error' (raised before its comparison finished), 'fail' or 'pass'."""
    if result.get("status") in ("pass", "fail", "error"):
        return result["status"]
    if result.get("error"):
        return "error"
    return "pass" if result.get("passed") else "fail"


# -- run stamps ------------------------------------------------------------------------------------
def commit_of(directory: str | os.PathLike) -> str | None:
    """``git describe --always --dirty`` of ``directory``, else $GITHUB_SHA, else None."""
    try:
        out = subprocess.run(
            ["git", "-C", str(directory), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=10, check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("GITHUB_SHA") or None


def run_stamp(*, commit: str | None, selection: str, shard: str | None = None,
              why_partial: Iterable[str] = ()) -> dict[str, Any]:
    """A run's identity: when, at which commit, what it selected, and why it did not run everything."""
    reasons = list(why_partial)
    return {
        "id": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6],
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit,
        "selection": selection,
        "shard": shard,
        "partial": bool(reasons),
        "why_partial": reasons,
    }


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 1 <= i <= n; ValueError naming the expected form otherwise."""
    parts = str(text).split("/")
    try:
        i, n = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--shard expects i/n with whole numbers (e.g. 2/4), got {text!r}") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard {text!r}: need 1 <= i <= n (shards are numbered from 1), got i={i}, n={n}")
    return i, n


def shard_of(test_id: str, n: int) -> int:
    """The shard (1..n) a test id belongs to: a stable hash of the id, the same on every machine."""
    import zlib

    return zlib.crc32(test_id.encode("utf-8")) % n + 1


# -- documents -------------------------------------------------------------------------------------
def load_document(path: str | os.PathLike) -> dict[str, Any]:
    """Read a report JSON document; ValueError naming the file when it is not one."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except ValueError as exc:  # not UTF-8, not JSON, a bare NaN or Infinity
        raise ValueError(f"{path}: not a parity report (invalid JSON: {one_line(exc)})") from None
    if not isinstance(doc, dict) or doc.get("schema") != 1 or not isinstance(doc.get("results"), list):
        raise ValueError(f"{path}: not a parity report (expected a JSON object with \"schema\": 1 and a "
                         f"\"results\" list, as written by --report or compare --json)")
    problem = _document_problem(doc)
    if problem is not None:
        raise ValueError(f"{path}: a damaged parity report ({problem}); write it again with --report or "
                         f"compare --json")
    return doc


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON; a report writes non-finite numbers as strings (\"inf\", \"nan\")")


# what a result's fields must be when present (None stands for "not measured")
_RESULT_FIELDS = {"test": (str,), "pair": (str,), "dtype": (str,), "output": (dict,), "layers": (list,),
                  "run": (dict,), "diagnosis": (list,), "notes": (list,), "seconds": (int, float, str)}


def _document_problem(doc: dict[str, Any]) -> str | None:
    """The first field of a schema-1 document that no page, merge or diff can read, or None."""
    if not isinstance(doc.get("environment", {}), dict):
        return "\"environment\" is not an object"
    runs = doc.get("runs", [])
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        return "\"runs\" is not a list of run objects"
    for run in runs:
        if run.get("shard") is not None:
            try:
                parse_shard(run["shard"])
            except ValueError:
                return f"run {run.get('id')!r} has shard {run['shard']!r}, not i/n"
    for index, result in enumerate(doc["results"]):
        if not isinstance(result, dict):
            return f"result {index} is {type(result).__name__}, not an object"
        for name, kinds in _RESULT_FIELDS.items():
            value = result.get(name)
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
                return f"result {index} field {name!r} is {value!r}"
        if not all(isinstance(row, dict) for row in result.get("layers") or []):
            return f"result {index} has a layer row that is not an object"
    return None


def _newer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether result ``a`` comes from a later run than ``b`` (unstamped results are the oldest)."""
    return str((a.get("run") or {}).get("time") or "") >= str((b.get("run") or {}).get("time") or "")


def merge_results(*groups: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keyed union of result lists; on a shared key the newer run wins (later group on a tie)."""
    merged: dict[Key, dict[str, Any]] = {}
    for group in groups:
        for result in group:
            k = key(result)
            if k not in merged or _newer(result, merged[k]):
                merged[k] = result
    return sorted(merged.values(), key=lambda r: (key(r)[1], key(r)[2], key(r)[0]))


def merge_documents(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One document from several (shards, or earlier runs): results merged, runs listed once."""
    if not docs:
        raise ValueError("merge needs at least one report")
    results = merge_results(*(d["results"] for d in docs))
    live = {(r.get("run") or {}).get("id") for r in results}
    runs: dict[str, dict[str, Any]] = {}
    for d in docs:
        for run in d.get("runs", []):
            if run.get("id") in live:
                runs[run["id"]] = run
    latest = max(docs, key=lambda d: max((str(r.get("time")) for r in d.get("runs", [])), default=""))
    return {"schema": 1, "environment": latest.get("environment", {}),
            "runs": sorted(runs.values(), key=lambda r: str(r.get("time"))), "results": results}


# -- history ---------------------------------------------------------------------------------------
def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None  # an infinite error is no point on a chart; the status says it failed


def history_entry(stamp: dict[str, Any], results: list[dict[str, Any]],
                  environment: dict[str, Any] | None = None) -> dict[str, Any]:
    """One history line: the run stamp, counts, and per result its output error, time and verdict."""
    counts = {s: sum(status(r) == s for r in results) for s in ("pass", "fail", "error")}
    return {
        **stamp,
        "versions": (environment or {}).get("versions", {}),
        "passed": counts["pass"], "failures": counts["fail"], "errors": counts["error"], "total": len(results),
        "failed": sorted({f"{r.get('pair')}[{r.get('dtype')}]" for r in results if status(r) != "pass"}),
        "results": [
            {"test": r.get("test"), "pair": r.get("pair"), "dtype": r.get("dtype"), "status": status(r),
             "rel_l2": _number((r.get("output") or {}).get("rel_l2")),
             "max_abs": _number((r.get("output") or {}).get("max_abs")),
             "seconds": _number(r.get("seconds")), "culprit": r.get("culprit")}
            for r in results
        ],
    }


def append_history(path: str | os.PathLike, entry: dict[str, Any]) -> Path:
    """Append one JSON line (a single write, so concurrent appenders do not interleave lines)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, allow_nan=False) + "\n")
    return path


def read_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """History entries, oldest first; lines that are not JSON objects are named in a ValueError."""
    path = Path(path)
    if not path.exists():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a history line (invalid JSON: {exc})") from None
        if not isinstance(entry, dict):
            raise ValueError(f"{path}:{number}: not a history line (expected a JSON object)")
        entries.append(entry)
    return sorted(entries, key=lambda e: str(e.get("time", "")))


def regressions(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """Why ``current`` (a result or history row) regressed against ``previous``; [] when it did not."""
    if previous is None:
        return []
    was, now = status(previous), status(current)
    if was == "pass" and now != "pass":
        return [f"newly {'failing' if now == 'fail' else 'raising an error'}"]
    before, after = _error_of(previous), _error_of(current)
    if now == "pass" and before is not None and after is not None and after > GROWTH * max(before, 1e-300):
        if before == 0.0 and after == 0.0:
            return []
        return [f"output error grew {after / before:.0f}x while passing" if before > 0
                else "output error grew from exactly 0 while passing"]
    return []


def _error_of(row: dict[str, Any]) -> float | None:
    if "rel_l2" in row and not isinstance(row.get("rel_l2"), dict):
        return _number(row["rel_l2"])
    return _number((row.get("output") or {}).get("rel_l2"))


def diff_documents(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """What changed between two reports, per key: regressions, fixed, new, gone, changed status."""
    before = {key(r): r for r in old["results"]}
    after = {key(r): r for r in new["results"]}
    out: dict[str, list[dict[str, Any]]] = {"regressed": [], "fixed": [], "changed": [], "new": [], "gone": []}
    for k in sorted(before.keys() | after.keys(), key=lambda k: (k[1], k[2], k[0])):
        a, b = before.get(k), after.get(k)
        row = {"test": k[0] or None, "pair": k[1] or None, "dtype": k[2] or None,
               "before": status(a) if a else None, "after": status(b) if b else None,
               "error_before": _error_of(a) if a else None, "error_after": _error_of(b) if b else None}
        if a is None:
            out["new"].append(row)
        elif b is None:
            out["gone"].append(row)
        elif why := regressions(a, b):
            out["regressed"].append({**row, "why": why})
        elif status(a) != "pass" and status(b) == "pass":
            out["fixed"].append(row)
        elif status(a) != status(b):
            out["changed"].append(row)
    return out
