"""Golden files: JSON snapshots of values (tensors included) that tests diff against.

A golden holds any JSON-able structure; tensors are stored with dtype and shape. ``check``
compares a fresh value with the stored one, numbers within ``atol + rtol*|expected|``, and fails
with a report: what differs at which path, tensor shapes/dtypes and error statistics, the first
mismatching indices, and the command that regenerates the file. Files are written atomically.

Reading checks what it decodes: a file that is not JSON, cannot be read, or holds a tensor whose
spec is broken (missing ``dtype``/``shape``/``data``, an unknown dtype, a shape that is not a list
of sizes, data that is not a flat list of numbers, or as many numbers as the shape does not hold)
raises :class:`GoldenFileError` naming the file and the path inside it (``$.table[2].logits``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch

from harness.checks import check_type, check_value, is_int_list
from harness.files import atomic_write_text

__all__ = ["GoldenMismatch", "GoldenFileError", "to_jsonable", "from_jsonable", "diff", "check", "write", "read"]

_MAX_LISTED = 8


class GoldenMismatch(AssertionError):
    """A value differs from its golden file; the message is the report."""


class GoldenFileError(ValueError):
    """A golden file that cannot be read or decoded; the message names the file and the path inside it."""


class _Broken(ValueError):
    """What is wrong at ``where`` inside a decoded document (turned into a GoldenFileError by ``read``)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")


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


def _tensor(spec: Any, where: str) -> torch.Tensor:
    where = f"{where}.__tensor__"
    if not isinstance(spec, dict):
        raise _Broken(where, f"expected an object with dtype, shape and data, got {type(spec).__name__}")
    missing = [k for k in ("dtype", "shape", "data") if k not in spec]
    if missing:
        raise _Broken(where, f"missing {', '.join(missing)} (a tensor is {{dtype, shape, data}})")
    dtype = getattr(torch, spec["dtype"], None) if isinstance(spec["dtype"], str) else None
    if not isinstance(dtype, torch.dtype):
        raise _Broken(f"{where}.dtype", f"{spec['dtype']!r} is not a torch dtype name such as 'float32' or 'int64'")
    shape = spec["shape"]
    if not is_int_list(shape, minimum=0, kinds=(list,)):
        raise _Broken(f"{where}.shape", f"expected a list of sizes >= 0, got {shape!r:.60}")
    if not isinstance(spec["data"], list):
        raise _Broken(f"{where}.data", f"expected a flat list of numbers, got {type(spec['data']).__name__}")
    data = [from_jsonable(v, f"{where}.data[{i}]") for i, v in enumerate(spec["data"])]
    bad = next((i for i, v in enumerate(data) if not isinstance(v, (int, float))), None)
    if bad is not None:
        raise _Broken(f"{where}.data[{bad}]", f"expected a number, got {spec['data'][bad]!r:.60}")
    if len(data) != math.prod(shape):
        raise _Broken(where, f"shape {shape} holds {math.prod(shape)} values but data has {len(data)}")
    try:
        return torch.tensor(data, dtype=dtype).reshape(shape)
    except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
        raise _Broken(where, f"cannot build a {spec['dtype']} tensor from its data: {exc}") from None


def from_jsonable(value: Any, where: str = "$") -> Any:
    """The value :func:`to_jsonable` encoded; a broken tensor or float raises a ValueError naming ``where``."""
    if isinstance(value, dict):
        if "__tensor__" in value and len(value) == 1:
            return _tensor(value["__tensor__"], where)
        if "__float__" in value and len(value) == 1:
            text = value["__float__"]
            try:
                return float(text)
            except (TypeError, ValueError):
                raise _Broken(f"{where}.__float__", f"expected 'nan', 'inf' or '-inf', got {text!r:.60}") from None
        return {k: from_jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def write(path: str | Path, value: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(value), indent=1, sort_keys=True) + "\n")


def read(path: str | Path, *, regenerate: str | None = None) -> Any:
    """The value stored in the golden file ``path``; errors are GoldenFileErrors naming the file."""
    path = Path(path)
    fix = f"; regenerate it with: {regenerate}" if regenerate else ""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = "it is a directory" if path.is_dir() else (exc.strerror if isinstance(exc, OSError) else exc)
        raise GoldenFileError(f"golden file {path} cannot be read: {reason or exc}{fix}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GoldenFileError(f"golden file {path} is not valid JSON: {exc}{fix}") from None
    try:
        return from_jsonable(document)
    except _Broken as exc:
        raise GoldenFileError(f"golden file {path}: broken value at {exc}{fix}") from None


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
    check_type("golden name", name, str)
    check_value("golden name", name, bool(name) and "/" not in name and not name.startswith("."),
                expected="a plain file stem like 'vlm_grid_table'")
    path = Path(directory) / f"{name}.json"
    normalized = from_jsonable(to_jsonable(value))  # tuples -> lists, dataclasses -> dicts
    if update:
        return write(path, value)
    if not path.exists():
        raise GoldenMismatch(f"golden file {path} does not exist; create it with: {regenerate}")
    problems = diff(normalized, read(path, regenerate=regenerate), atol=atol, rtol=rtol)
    if problems:
        shown = "\n  ".join(problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise GoldenMismatch(
            f"golden {name!r} ({path}) differs in {len(problems)} place(s) (atol={atol:g}, rtol={rtol:g}):\n"
            f"  {shown}{more}\nIf the change is intended, regenerate with: {regenerate} "
            f"and review `git diff {path}`"
        )
    return path
