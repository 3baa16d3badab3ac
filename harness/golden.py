"""Golden files: JSON snapshots of values (tensors included) that tests diff against.

A golden holds any JSON-able structure; tensors are stored with dtype and shape. ``check``
compares a fresh value with the stored one, numbers within ``atol + rtol*|expected|``, and fails
with a report: what differs at which path, tensor shapes/dtypes and error statistics, the first
mismatching indices, and the command that regenerates the file. Files are written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch

from harness.report import atomic_write_text

__all__ = ["GoldenMismatch", "to_jsonable", "from_jsonable", "diff", "check", "write", "read"]

_MAX_LISTED = 8


class GoldenMismatch(AssertionError):
    """A value differs from its golden file; the message is the report."""


def to_jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        data = t.double() if t.is_floating_point() else t
        return {"__tensor__": {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                               "data": [to_jsonable(v) for v in data.flatten().tolist()]}}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": str(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"golden values must be JSON-able or tensors; got {type(value).__name__} ({value!r:.60})")


def from_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            spec = value["__tensor__"]
            data = [from_jsonable(v) for v in spec["data"]]
            return torch.tensor(data, dtype=getattr(torch, spec["dtype"])).reshape(spec["shape"])
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


def write(path: str | Path, value: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(value), indent=1, sort_keys=True) + "\n")


def read(path: str | Path) -> Any:
    path = Path(path)
    try:
        return from_jsonable(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise ValueError(f"golden file {path} is not valid JSON: {exc}") from None


def _close(a: float, b: float, atol: float, rtol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= atol + rtol * abs(b)


def _tensor_diff(path: str, got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float) -> list[str]:
    if got.shape != want.shape or got.dtype != want.dtype:
        return [f"{path}: tensor {tuple(got.shape)} {got.dtype} vs golden {tuple(want.shape)} {want.dtype}"]
    a, b = got.double(), want.double()
    bad = ~((a - b).abs() <= atol + rtol * b.abs()) & ~(a.isnan() & b.isnan()) & ~(a == b)
    if not bad.any():
        return []
    err = (a - b).abs()[bad]
    idx = bad.nonzero()[:_MAX_LISTED].tolist()
    firsts = ", ".join(f"{tuple(i)}: {a[tuple(i)].item():.6g} vs {b[tuple(i)].item():.6g}" for i in idx)
    return [f"{path}: tensor {tuple(got.shape)} {got.dtype}: {int(bad.sum())} of {bad.numel()} elements "
            f"differ (max_abs {err.max().item():.3e}, mean_abs {err.mean().item():.3e}); first: {firsts}"]


def diff(got: Any, want: Any, *, atol: float = 0.0, rtol: float = 0.0, path: str = "$") -> list[str]:
    """Human-readable differences between ``got`` and the golden ``want`` (empty when equal)."""
    if isinstance(want, torch.Tensor) or isinstance(got, torch.Tensor):
        if not (isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor)):
            return [f"{path}: got {type(got).__name__}, golden has {type(want).__name__}"]
        return _tensor_diff(path, got, want, atol, rtol)
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{path}.{k}: missing (golden has {want[k]!r:.60})" for k in want if k not in got]
        out += [f"{path}.{k}: not in golden (got {got[k]!r:.60})" for k in got if k not in want]
        for k in want:
            if k in got:
                out += diff(got[k], want[k], atol=atol, rtol=rtol, path=f"{path}.{k}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{path}: length {len(got)}, golden {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in diff(g, w, atol=atol, rtol=rtol, path=f"{path}[{i}]")]
    numbers = (int, float)
    if isinstance(want, numbers) and isinstance(got, numbers) and not isinstance(want, bool) and not isinstance(got, bool):
        return [] if _close(float(got), float(want), atol, rtol) else [f"{path}: {got!r} vs golden {want!r}"]
    return [] if got == want and type(got) is type(want) else [f"{path}: {got!r:.80} vs golden {want!r:.80}"]


def check(
    name: str,
    value: Any,
    *,
    directory: str | Path,
    atol: float = 0.0,
    rtol: float = 0.0,
    update: bool = False,
    regenerate: str = "pytest --update-goldens",
) -> Path:
    """Compare ``value`` with ``directory/name.json``; with ``update`` (re)write it instead."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"golden name must be a plain file stem like 'vlm_grid_table', got {name!r}")
    path = Path(directory) / f"{name}.json"
    normalized = from_jsonable(to_jsonable(value))  # tuples -> lists, dataclasses -> dicts
    if update:
        return write(path, value)
    if not path.exists():
        raise GoldenMismatch(f"golden file {path} does not exist; create it with: {regenerate}")
    problems = diff(normalized, read(path), atol=atol, rtol=rtol)
    if problems:
        shown = "\n  ".join(problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise GoldenMismatch(
            f"golden {name!r} ({path}) differs in {len(problems)} place(s) (atol={atol:g}, rtol={rtol:g}):\n"
            f"  {shown}{more}\nIf the change is intended, regenerate with: {regenerate} "
            f"and review `git diff {path}`"
        )
    return path
