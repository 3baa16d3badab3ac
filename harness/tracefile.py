"""Trace files: one model run recorded to disk, so a comparison can happen in another environment.

A trace file is a valid safetensors file. Its tensors are the inputs of the run, every module
call's input and output leaves, the final outputs and optionally the model's weights; its
``__metadata__["harness_trace"]`` is a JSON document describing the run: every call (name, call
index, entry/exit positions, module type and settings, which tensors are its arguments and
outputs), the weights' fingerprint, the environment (versions, device, dtype) and the options.

Recording streams: hooks write each tensor to a data file in the destination folder the moment
a call enters (inputs) or returns (outputs) and keep only its key, so recording holds no tensor
beyond what the forward itself holds. A tensor that is passed on unchanged (an output that is the
next call's input) is written once: tensors are remembered by identity and version counter, as
in :class:`harness.trace.Tracer`. At the end the safetensors header (which must come first and
lists every offset) is written to a temporary file, the data is appended, and the result is
renamed into place; an interrupted recording leaves no file behind.

Loading checks the frame before trusting it: a file that is not safetensors, a safetensors file
without harness metadata, a newer format version, or a file shorter than its header says are
refused with an error naming the file.

Options: ``include`` (regex or predicate on module names) keeps full tensors only for the
matching modules, the others get statistics (:class:`harness.trace.TensorSummary`) whose layer
errors are lower bounds; ``precision`` stores floating tensors in a narrower dtype, whose
rounding error is measured at record time, added to the tolerances and stated in the report.

The weights fingerprint is layout-free (count, sum, sum of squares and sum of absolute values of
every floating parameter, in float64), so it matches a candidate whose weights were converted
from the recorded model by renaming, reshaping, splitting or fusing tensors.
"""

from __future__ import annotations

import json
import math
import os
import struct
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from harness.checks import check_choice, check_module
from harness.files import atomic_write, check_target, discard, scratch_file
from harness.headers import MAX_SAFETENSORS_HEADER, safetensors_entry_problem
from harness.metrics import Tolerance
from harness.options import CompareOptions
from harness.pairs import Call, as_call
from harness.trace import ROOT, Record, TensorSummary, flatten_tensors, has_nonfinite, hookable_modules, name_filter

__all__ = ["Trace", "Replay", "RecordedModel", "RecordedModule", "record", "record_pair", "load_trace", "weights_fingerprint",
           "check_fingerprint", "trace_reference", "FORMAT", "VERSION"]

FORMAT = "harness-trace"
VERSION = 1
_META_KEY = "harness_trace"

_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# -- weights fingerprint ---------------------------------------------------------------------------
_SAMPLE = 4096  # about this many sampled values identify a set of weights
_MIX = -4658895280553007687  # 0xbf58476d1ce4e5b9 as int64 (splitmix64's multiplier)
# Thresholds for "the same weights": a conversion may drop a few reference tensors (an unused
# mask token) and add a few candidate-only ones; any other model draws other values altogether.
MIN_FOUND = 0.99  # of the recorded sample, in the candidate
MIN_KNOWN = 0.95  # of the candidate's sample, in the recording


def _hashes(x: torch.Tensor) -> torch.Tensor:
    h = x.detach().double().reshape(-1).view(torch.int64)
    h = (h ^ (h >> 31)) * _MIX
    return h ^ (h >> 29)


def _sample(model: nn.Module, modulus: int) -> dict[str, set[int]]:
    """Per parameter name, the hashes of its values that fall in residue class 0 mod ``modulus``."""
    out: dict[str, set[int]] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point():
                h = _hashes(p)
                out[name] = set(h[torch.remainder(h, modulus) == 0].tolist())
    return out


def weights_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Layout-free fingerprint of ``model``'s floating parameters.

    The values themselves identify weights whatever their names and shapes: the fingerprint
    keeps the hashes of the values whose hash falls in one residue class modulo ``count/4096``,
    a fixed-rule sample that a converted copy of the weights reproduces exactly.
    """
    count = sum(p.numel() for p in model.parameters() if p.is_floating_point())
    modulus = max(1, count // _SAMPLE)
    return {"count": count, "modulus": modulus, "sample": sorted(set().union(*_sample(model, modulus).values()))}


def check_fingerprint(recorded: Mapping[str, Any], model: nn.Module, *, source: str) -> str:
    """Raise a ValueError when ``model``'s weights are not the ones recorded in ``source``.

    Besides the overall overlap, every candidate tensor with at least four sampled values must
    have most of them recorded: a tensor changed after the transfer is named.
    Returns a one-line account of the match for the report.
    """
    recorded_sample = set(recorded["sample"])
    per_tensor = _sample(model, recorded["modulus"])
    mine = set().union(*per_tensor.values())
    changed = [n for n, h in per_tensor.items() if len(h) >= 4 and len(h & recorded_sample) < len(h) / 2]
    found = len(recorded_sample & mine) / max(len(recorded_sample), 1)
    known = len(recorded_sample & mine) / max(len(mine), 1)
    count = sum(p.numel() for p in model.parameters() if p.is_floating_point())
    account = (f"{found:.1%} of the recorded weights' sampled values are in the candidate, {known:.1%} of the "
               f"candidate's are recorded ({count} vs {recorded['count']} parameter values)")
    if changed:
        raise ValueError(
            f"the candidate's weights do not match the weights fingerprint of trace {source}: the values of "
            f"{', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''} are not the recorded model's ({account}). "
            f"Compare the weights converted from the recorded model, unchanged (or record the trace again)"
        )
    if found < MIN_FOUND or known < MIN_KNOWN:
        raise ValueError(
            f"the candidate's weights do not match the weights fingerprint of trace {source}: {account}; "
            f"expected at least {MIN_FOUND:.0%} and {MIN_KNOWN:.0%}. The trace was recorded with other weights: "
            f"load the weights converted from the recorded model into the candidate (or record the trace again)"
        )
    return account


# -- streaming writer ------------------------------------------------------------------------------
class _Sink:
    """Tensors appended to a data file as they come; ``finish`` assembles the safetensors file."""

    def __init__(self, path: Path, precision: torch.dtype | None) -> None:
        self.path = path
        self.precision = precision
        self.data_path = scratch_file(path, "data")
        self.file = open(self.data_path, "r+b")
        self.entries: dict[str, dict[str, Any]] = {}
        self.tensor_meta: dict[str, dict[str, Any]] = {}
        self.offset = 0
        self.storage_error = {"max_abs": 0.0, "max_rel": 0.0}
        # id(tensor) -> (weak ref, version, key): a tensor passed on unchanged is written once
        self._seen: dict[int, tuple[weakref.ref, int, str]] = {}

    def add(self, t: torch.Tensor, *, exact: bool = False) -> str:
        entry = self._seen.get(id(t))
        if entry is not None and entry[0]() is t and entry[1] == t._version:
            if not exact or self.tensor_meta[entry[2]].get("stored") is None:
                return entry[2]
        key = self._write(t, exact=exact)
        try:
            self._seen[id(t)] = (weakref.ref(t), t._version, key)
        except TypeError:  # tensor subclasses without weak references: no sharing, still correct
            pass
        return key

    def _write(self, t: torch.Tensor, *, exact: bool) -> str:
        x = t.detach()
        meta: dict[str, Any] = {"dtype": str(x.dtype).removeprefix("torch."), "device": str(x.device)}
        if x.is_complex():
            x, meta["complex"] = torch.view_as_real(x), True
        x = x.cpu()
        if not exact and self.precision is not None and x.is_floating_point() \
                and x.element_size() > torch.empty((), dtype=self.precision).element_size():
            stored = x.to(self.precision)
            err = (stored.double() - x.double()).abs()
            max_abs = float(err.max()) if err.numel() else 0.0
            scale = float(x.double().abs().max()) if x.numel() else 0.0
            self.storage_error["max_abs"] = max(self.storage_error["max_abs"], max_abs)
            self.storage_error["max_rel"] = max(self.storage_error["max_rel"], max_abs / scale if scale else 0.0)
            meta["stored"] = str(self.precision).removeprefix("torch.")
            x = stored
        if x.dtype not in _ST_DTYPES:
            raise TypeError(f"cannot store a {x.dtype} tensor in a trace file (safetensors holds {sorted(map(str, _ST_DTYPES))})")
        data = x.contiguous().reshape(-1).view(torch.uint8).numpy()
        key = f"t{len(self.entries)}"
        self.file.write(memoryview(data))
        self.entries[key] = {"dtype": _ST_DTYPES[x.dtype], "shape": list(x.shape),
                             "data_offsets": [self.offset, self.offset + data.nbytes]}
        self.offset += data.nbytes
        self.tensor_meta[key] = meta
        return key

    def finish(self, metadata: dict[str, Any]) -> Path:
        self.file.close()
        metadata = dict(metadata, tensors=self.tensor_meta, storage_error=self.storage_error)
        header = {"__metadata__": {_META_KEY: json.dumps(metadata, allow_nan=True)}, **self.entries}
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes with spaces
        if len(raw) > MAX_SAFETENSORS_HEADER:
            raise ValueError(f"the trace metadata of {self.path} is {len(raw)} bytes, over the safetensors "
                             f"limit of {MAX_SAFETENSORS_HEADER}; record fewer modules (include=...)")

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as out, open(self.data_path, "rb") as data:
                out.write(struct.pack("<Q", len(raw)))
                out.write(raw)
                while chunk := data.read(1 << 24):
                    out.write(chunk)

        try:
            atomic_write(self.path, write)
        finally:
            discard(self.data_path)
        return self.path

    def abort(self) -> None:
        self.file.close()
        discard(self.data_path)


def _encode(value: Any, store: Callable[[torch.Tensor], str]) -> Any:
    """A call's arguments as JSON: tensors become ``{"tensor": key}``; other leaves must be JSON-able."""
    if isinstance(value, torch.Tensor):
        return {"tensor": store(value)}
    if isinstance(value, (tuple, list)):
        return {"list" if isinstance(value, list) else "tuple": [_encode(v, store) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _encode(v, store) for k, v in value.items()}}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    return {"opaque": f"{type(value).__name__}"}


def _decode(value: Any, load: Callable[[str], torch.Tensor]) -> Any:
    (kind, v), = value.items()
    if kind == "tensor":
        return load(v)
    if kind in ("list", "tuple"):
        items = [_decode(x, load) for x in v]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        return {k: _decode(x, load) for k, x in v.items()}
    if kind == "float":
        return float(v)
    if kind == "dtype":
        return getattr(torch, v)
    if kind == "value":
        return v
    raise _Opaque(v)


class _Opaque(Exception):
    """An argument that was not JSON-able was recorded by type name only: the call cannot be re-run."""


def _has_opaque(value: Any) -> bool:
    (kind, v), = value.items()
    if kind == "opaque":
        return True
    if kind in ("list", "tuple"):
        return any(_has_opaque(x) for x in v)
    if kind == "dict":
        return any(_has_opaque(x) for x in v.values())
    return False


def _summary(t: torch.Tensor) -> dict[str, Any]:
    s = TensorSummary.of(t)
    return {"summary": [list(s.shape), s.dtype, s.mean, s.std, s.absmax, s.nonfinite]}


class _Recorder:
    """Forward hooks that stream every call of ``model`` into a :class:`_Sink`."""

    def __init__(self, model: nn.Module, sink: _Sink, include: Callable[[str], bool] | None) -> None:
        self.model, self.sink, self.include = model, sink, include
        self.calls: list[dict[str, Any]] = []
        self.first_nonfinite: str | None = None
        self._open: dict[int, list[tuple[dict[str, Any], dict[int, int]]]] = {}
        self._counts: dict[str, int] = {}
        self._clock = 0
        self._handles: list[Any] = []

    def __enter__(self) -> "_Recorder":
        try:
            for name, module in hookable_modules(self.model):
                name = name or ROOT
                self._handles.append(module.register_forward_pre_hook(self._pre(name), with_kwargs=True))
                self._handles.append(module.register_forward_hook(self._post(name), with_kwargs=True))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _full(self, name: str) -> bool:
        return self.include is None or name == ROOT or self.include(name)

    def _leaf(self, t: torch.Tensor, full: bool) -> dict[str, Any]:
        return {"tensor": self.sink.add(t)} if full else _summary(t)

    def _pre(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            call = self._counts.get(name, 0)
            self._counts[name] = call + 1
            self._clock += 1
            full = self._full(name)
            entry: dict[str, Any] = {
                "name": name, "call": call, "start": self._clock, "end": -1,
                "type": f"{type(module).__module__}.{type(module).__qualname__}",
                "settings": _settings(module), "full": full,
            }
            leaves = flatten_tensors(args, "args") | flatten_tensors(kwargs, "kwargs")
            if full:
                entry["args"] = _encode(args, self.sink.add)
                entry["kwargs"] = _encode(kwargs, self.sink.add)
            entry["inputs"] = {k: self._leaf(v, full) for k, v in leaves.items()}
            versions = {id(a): a._version for a in args if isinstance(a, torch.Tensor)}
            self._open.setdefault(id(module), []).append((entry, versions))

        return hook

    def _post(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            stack = self._open.get(id(module))
            if not stack:
                return
            entry, versions = stack.pop()
            self._clock += 1
            entry["end"] = self._clock
            entry["passthrough"] = isinstance(output, torch.Tensor) and versions.get(id(output)) == output._version \
                and any(output is a for a in args)
            leaves = flatten_tensors(output)
            entry["outputs"] = {k: self._leaf(v, entry["full"]) for k, v in leaves.items()}
            # the first call that makes a NaN/Inf, not one that received it through its inputs
            if self.first_nonfinite is None and has_nonfinite(leaves) \
                    and not has_nonfinite(flatten_tensors((args, kwargs))):
                self.first_nonfinite = f"{name}#{entry['call']}"
            self.calls.append(entry)

        return hook


def _plain_settings(module: nn.Module) -> dict[str, Any]:
    """The module's plain attributes (eps, approximate, stride...), as the diagnosis compares them."""
    from harness.diagnose import _settings as plain

    out = {}
    for k, v in plain(module).items():
        v = list(v) if isinstance(v, tuple) else v
        out[k] = repr(v) if isinstance(v, float) and not math.isfinite(v) else v
    return out


def _settings(module: nn.Module) -> str:
    try:
        return module.extra_repr()
    except Exception:  # a module whose repr needs state it lacks: the type alone describes it
        return ""


def _environment(device: str) -> dict[str, Any]:
    from harness.report import environment

    return environment(device)


def _check_precision(precision: str | None) -> torch.dtype | None:
    if precision is None:
        return None
    return _PRECISIONS[check_choice("precision", precision, [*sorted(_PRECISIONS), None])]


def record(
    model: nn.Module,
    inputs: Any,
    path: str | os.PathLike,
    *,
    call: Callable[[nn.Module, Call], Any] | None = None,
    outputs: Callable[[Any], Mapping[str, torch.Tensor]] | None = None,
    include: str | Callable[[str], bool] | None = None,
    precision: str | None = None,
    weights: bool = False,
    source: str | None = None,
    compare_options: Mapping[str, Any] | None = None,
) -> Path:
    """Run ``model`` on ``inputs`` and write its trace to ``path`` (see module docstring).

    ``call``/``outputs``: how the model is called and which outputs are final (as in
    :class:`harness.Pair`). ``weights``: also store the state dict, so that a candidate can be
    built from the file alone. ``source``: how the model was specified (stored for reports).
    ``compare_options``: data options of the pair (rename rules, tolerances, rerun patterns,
    allow_nonfinite) that a comparison against this trace uses by default.
    """
    check_module("record(model)", model)
    include_fn = name_filter(include)
    store_dtype = _check_precision(precision)
    path = Path(path)
    check_target(path, make_parents=False)  # a missing folder, a file in its place, a folder taking no files
    run_call = as_call(inputs)
    sink = _Sink(path, store_dtype)
    try:
        recorded_inputs = {"args": _encode(run_call.args, lambda t: sink.add(t, exact=True)),
                           "kwargs": _encode(dict(run_call.kwargs), lambda t: sink.add(t, exact=True))}
        used = run_call.clone()
        with torch.no_grad(), _Recorder(model, sink, include_fn) as recorder:
            out = call(model, used) if call else used(model)
        final = dict(outputs(out)) if outputs else flatten_tensors(out)
        if not final:
            raise ValueError("the model returned no tensor outputs to record")
        final_keys = {k: sink.add(v) for k, v in final.items()}
        weight_keys = {k: sink.add(v, exact=True) for k, v in model.state_dict().items()} if weights else None
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        device = next((str(p.device) for p in model.parameters()), "cpu")
        metadata = {
            "format": FORMAT, "version": VERSION, "source": source or type(model).__qualname__,
            "dtype": str(dtype).removeprefix("torch."), "device": device,
            "environment": _environment(device),
            "fingerprint": weights_fingerprint(model),
            "parameters": [[k, list(p.shape)] for k, p in model.named_parameters()],
            "inputs": recorded_inputs, "input_mutations": run_call.mutated_in(used),
            "calls": recorder.calls, "outputs": final_keys, "weights": weight_keys,
            "modules": {name or ROOT: {"type": f"{type(m).__module__}.{type(m).__qualname__}",
                                       "settings": _plain_settings(m)} for name, m in model.named_modules()},
            "first_nonfinite": recorder.first_nonfinite,
            "options": {"include": include if isinstance(include, str) else (None if include is None else "callable"),
                        "precision": precision},
            "compare_options": _jsonable_options(compare_options or {}),
        }
        return sink.finish(metadata)
    except BaseException:
        sink.abort()
        raise


def _jsonable_options(options: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if options.get("rename"):
        out["rename"] = [list(r) for r in options["rename"]]
    if options.get("tolerances"):
        out["tolerances"] = {k: [t.atol, t.rtol] for k, t in options["tolerances"].items()}
    if options.get("module_tolerances"):
        out["module_tolerances"] = [[p, d, t.atol, t.rtol] for p, d, t in options["module_tolerances"]]
    if options.get("rerun") is not None:
        out["rerun"] = list(options["rerun"])
    if options.get("allow_nonfinite"):
        out["allow_nonfinite"] = True
    return out


def record_pair(
    pair: Any,
    side: str,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    inputs: Any = None,
    weights: bool = True,
    include: str | Callable[[str], bool] | None = None,
    precision: str | None = None,
) -> Path:
    """Record one side of a registered pair on its seeded inputs (or ``inputs``).

    The reference side also stores the pair's rename rules and tolerances, and by default its
    weights, so that ``compare PAIR --reference-trace`` can build the candidate from the file.
    """
    from harness.pairs import _load_candidate, as_pair

    pair = as_pair(pair)
    check_choice("side", side, ("reference", "candidate"))
    reference = pair.build_reference(dtype=dtype, device=device)
    if side == "reference":
        model, call, outputs = reference, pair.reference_call, pair.reference_outputs
    else:
        state = pair.convert({k: v.detach().clone() for k, v in reference.state_dict().items()})
        model = _load_candidate(pair.candidate, state, seed=pair.seed).to(device=device, dtype=dtype).eval()
        call, outputs = pair.candidate_call, pair.candidate_outputs
        del reference
    run = pair.inputs(dtype=dtype, device=device) if inputs is None else as_call(inputs).to(dtype, device)
    return record(model, run, path, call=call, outputs=outputs, include=include, precision=precision,
                  weights=weights, source=f"{pair.name}:{side}",
                  compare_options=pair.compare_options() if side == "reference" else None)


# -- loading ---------------------------------------------------------------------------------------
class RecordedModule(nn.Module):
    """Stands for a module of a recorded model: its type, settings and plain attributes (``eps``,
    ``approximate``...), and its submodules as recorded, but no code to run."""

    def __init__(self, type_name: str, settings: str, attributes: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.type_name, self.settings = type_name, settings
        for key, value in (attributes or {}).items():
            if key == "training" or not hasattr(self, key):
                setattr(self, key, tuple(value) if isinstance(value, list) else value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self.type_name} was recorded in a trace file and cannot run here")

    def extra_repr(self) -> str:
        return f"{self.type_name}({self.settings})"


@dataclass
class Trace:
    """A loaded trace file. Tensors are read on first use and shared between records."""

    path: Path
    meta: dict[str, Any]
    header: dict[str, Any]
    _cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    tensor_device: str = "cpu"  # where loaded tensors go (the candidate's device in a comparison)
    _tree: dict[str, RecordedModule] | None = field(default=None, repr=False)

    @property
    def source(self) -> str:
        return self.meta["source"]

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.meta["dtype"])

    @property
    def device(self) -> str:
        return self.meta["device"]

    @property
    def environment(self) -> dict[str, Any]:
        return self.meta["environment"]

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.meta["fingerprint"]

    @property
    def precision(self) -> str | None:
        return self.meta["options"]["precision"]

    @property
    def storage_error(self) -> dict[str, float]:
        return self.meta["storage_error"]

    def tensor(self, key: str) -> torch.Tensor:
        if key not in self._cache:
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt") as f:
                t = f.get_tensor(key)
            info = self.meta["tensors"][key]
            if info.get("complex"):
                t = torch.view_as_complex(t.to(getattr(torch, "float64" if info["dtype"] == "complex128" else "float32")))
            elif info.get("stored"):
                t = t.to(getattr(torch, info["dtype"]))
            self._cache[key] = t.to(self.tensor_device)
        return self._cache[key]

    def call(self) -> Call:
        """The recorded inputs of the run."""
        inputs = self.meta["inputs"]
        return Call(_decode(inputs["args"], self.tensor), _decode(inputs["kwargs"], self.tensor))

    def outputs(self) -> dict[str, torch.Tensor]:
        """The final outputs, by leaf path."""
        return {k: self.tensor(v) for k, v in self.meta["outputs"].items()}

    def weights(self) -> dict[str, torch.Tensor] | None:
        """The recorded state dict, when the trace was recorded with ``weights=True``."""
        keys = self.meta.get("weights")
        return None if keys is None else {k: self.tensor(v) for k, v in keys.items()}

    def records(self) -> list[Record]:
        """Every call as a :class:`harness.Record`, in completion order, like a live Tracer's."""
        out = []
        for c in self.meta["calls"]:
            leaf = self._leaf
            rec = Record(name=c["name"], call=c["call"], start=c["start"], end=c["end"],
                         inputs={k: leaf(v) for k, v in c["inputs"].items()},
                         outputs={k: leaf(v) for k, v in c["outputs"].items()},
                         passthrough=c["passthrough"])
            if c["full"] and not (_has_opaque(c["args"]) or _has_opaque(c["kwargs"])):
                rec.args, rec.kwargs = _decode(c["args"], self.tensor), _decode(c["kwargs"], self.tensor)
                rec.module = self._module(c)
            out.append(rec)
        return out

    def _module(self, call: dict[str, Any]) -> RecordedModule:
        """The recorded module tree's node for ``call`` (built once per trace)."""
        if self._tree is None:
            modules = self.meta.get("modules", {})
            settings = {c["name"]: c["settings"] for c in self.meta["calls"]}
            nodes = {name: RecordedModule(info["type"], settings.get(name, ""), info["settings"])
                     for name, info in modules.items()}
            for name, node in nodes.items():
                if name != ROOT:
                    parent, _, child = name.rpartition(".")
                    nodes[parent or ROOT].add_module(child, node)
            self._tree = nodes
        return self._tree.get(call["name"]) or RecordedModule(call["type"], call["settings"])

    def _leaf(self, value: dict[str, Any]) -> torch.Tensor | TensorSummary:
        if "tensor" in value:
            return self.tensor(value["tensor"])
        shape, dtype, mean, std, absmax, nonfinite = value["summary"]
        return TensorSummary(tuple(shape), dtype, mean, std, absmax, nonfinite)

    def compare_options(self) -> dict[str, Any]:
        """The recorded pair's data options, as keyword arguments of :func:`harness.compare`."""
        o = self.meta["compare_options"]
        out: dict[str, Any] = {}
        if "rename" in o:
            out["rename"] = [tuple(r) for r in o["rename"]]
        if "tolerances" in o:
            out["tolerances"] = {k: Tolerance(*v) for k, v in o["tolerances"].items()}
        if "module_tolerances" in o:
            out["module_tolerances"] = [(p, d, Tolerance(a, r)) for p, d, a, r in o["module_tolerances"]]
        if "rerun" in o:
            out["rerun"] = list(o["rerun"])
        if o.get("allow_nonfinite"):
            out["allow_nonfinite"] = True
        return out

    def widen(self, tolerance: Tolerance) -> Tolerance:
        """``tolerance`` plus the rounding that compact storage added to the recorded values."""
        if self.precision is None:
            return tolerance
        return Tolerance(tolerance.atol, tolerance.rtol + torch.finfo(_PRECISIONS[self.precision]).eps)

    def notes(self) -> list[str]:
        env = self.environment
        versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
        notes = [f"reference from trace {self.path} ({self.source}; recorded with {versions} on {self.device})"]
        if self.precision:
            notes.append(
                f"the trace stores tensors in {self.precision}: storage adds up to {self.storage_error['max_rel']:.2e} "
                f"relative ({self.storage_error['max_abs']:.2e} absolute) error to recorded values; tolerances "
                f"are widened by rtol {torch.finfo(_PRECISIONS[self.precision]).eps:.2e}")
        if self.meta["options"]["include"]:
            notes.append(f"the trace keeps full tensors only for modules matching {self.meta['options']['include']!r}; "
                         f"other layers are compared by statistics (lower bounds)")
        return notes


def load_trace(path: str | os.PathLike) -> Trace:
    """Open a trace file written by :func:`record`; refuse foreign, truncated or newer files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trace file {path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is not a trace file: {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise ValueError(f"{path} is not a trace file (not safetensors, or truncated inside its header: "
                             f"header of {n} bytes announced, file has {size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
        meta = json.loads(header["__metadata__"][_META_KEY])
        if not isinstance(meta, dict):
            raise TypeError(meta)
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not a trace file: no {_META_KEY!r} metadata in a safetensors header "
                         f"(a checkpoint or another program's file?); record one with `python -m harness record`") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a trace file: format {meta.get('format')!r}, expected {FORMAT!r}")
    if not isinstance(meta.get("version"), int):
        raise ValueError(f"{path} is damaged: its format version is {meta.get('version')!r}, not a number; "
                         f"record the trace again")
    if meta["version"] > VERSION:
        raise ValueError(f"{path} is trace format version {meta['version']}; this harness reads up to "
                         f"{VERSION}: upgrade the harness")
    header.pop("__metadata__")
    entries = [v for v in header.values() if isinstance(v, dict) and isinstance(v.get("data_offsets"), list)
               and len(v["data_offsets"]) == 2 and isinstance(v["data_offsets"][1], int)]
    data = max((v["data_offsets"][1] for v in entries), default=0)
    if size < 8 + n + data:
        raise ValueError(f"{path} is truncated: its header lists {data} bytes of tensors, the file holds "
                         f"{size - 8 - n}; record the trace again")
    problem = _damage(meta, header, size - 8 - n)
    if problem is not None:
        raise ValueError(f"{path} is damaged: {problem}; record the trace again")
    return Trace(path=path, meta=meta, header=header)


# what a trace's metadata must hold, and of which type (the rest is optional or checked where read)
_META_FIELDS = {"source": str, "dtype": str, "device": str, "environment": dict, "fingerprint": dict,
                "inputs": dict, "outputs": dict, "calls": list, "tensors": dict, "options": dict,
                "input_mutations": list, "first_nonfinite": (str, type(None))}
_CALL_FIELDS = {"name": str, "call": int, "start": int, "end": int, "inputs": dict, "outputs": dict,
                "passthrough": bool, "full": bool}


def _damage(meta: dict[str, Any], header: dict[str, Any], data_bytes: int) -> str | None:
    """What makes a trace's metadata or tensor header unreadable, or None."""
    for name, kind in _META_FIELDS.items():
        if not isinstance(meta.get(name), kind):
            return f"metadata field {name!r} is {meta.get(name)!r}"
    if not isinstance(getattr(torch, meta["dtype"], None), torch.dtype):
        return f"dtype {meta['dtype']!r} is no torch dtype"
    for index, call in enumerate(meta["calls"]):
        bad = next((k for k, kind in _CALL_FIELDS.items() if not isinstance(call, dict)
                    or not isinstance(call.get(k), kind)), None)
        if bad is not None:
            return f"call {index} has no valid {bad!r}"
    for key, info in header.items():
        problem = safetensors_entry_problem(info, data_bytes)
        if problem is not None:
            return f"tensor {key}: {problem}"
    for name in ("outputs", "weights"):
        ids = meta.get(name) or {}
        if not isinstance(ids, dict) or not all(isinstance(v, str) for v in ids.values()):
            return f"metadata field {name!r} is not a map of tensor ids"
    ids = {*_tensor_ids(meta), *meta["outputs"].values(), *(meta.get("weights") or {}).values()}
    missing = sorted(str(i) for i in ids - header.keys() | ids - meta["tensors"].keys())
    if missing:
        return f"the metadata refers to tensors the file does not hold ({', '.join(missing[:5])})"
    return None


def _tensor_ids(value: Any) -> list[str]:
    """Every tensor id the metadata refers to (``{"tensor": id}`` leaves)."""
    if isinstance(value, dict):
        if set(value) == {"tensor"} and isinstance(value["tensor"], str):
            return [value["tensor"]]
        return [i for k, v in value.items() if k != "tensors" for i in _tensor_ids(v)]
    if isinstance(value, list):
        return [i for v in value for i in _tensor_ids(v)]
    return []


def trace_reference(
    trace: Trace, candidate: nn.Module, inputs: Any = None
) -> tuple[list[Record], dict[str, torch.Tensor], Call]:
    """(reference records, final reference outputs, run inputs) from ``trace`` for ``candidate``.

    Refuses a candidate whose weights do not match the trace's fingerprint and inputs that differ
    from the recorded ones; without ``inputs`` the candidate runs on the recorded inputs.
    """
    replay = Replay.of(trace, candidate, inputs)
    return replay.records, replay.outputs, replay.call


class RecordedModel(nn.Module):
    """Stands for a recorded model inside :func:`harness.compare`: its module tree and its
    parameters under their recorded names, shapes and dtype (on the meta device, holding no
    values), but no forward. The tree tells which module owns which weight, so a weight map pairs
    a candidate's modules with the recorded ones as with the live model.

    ``weights=True``: the parameters and buffers hold the weights the trace stores, so a weight
    map transfers them to a candidate as from the live model (``map.transfer(recorded, candidate)``).
    """

    def __init__(self, trace: Trace, *, weights: bool = False) -> None:
        super().__init__()
        self._trace_path = str(trace.path)
        stored = trace.weights() if weights else None
        if weights and stored is None:
            raise ValueError(f"trace {trace.path} holds no weights: record it again with weights=True "
                             f"(python -m harness record ... --weights)")
        nodes: dict[str, nn.Module] = {"": self}
        # modules in the recorded order first (parameters then follow named_parameters' order),
        # then any owner a trace without a module list names only through its parameters
        recorded = [n for n in trace.meta.get("modules", {}) if n != ROOT]
        parameters = dict(trace.meta.get("parameters", []))
        for name in [*recorded, *(n.rpartition(".")[0] for n in [*parameters, *(stored or {})])]:
            _node(nodes, name)
        for name, shape in parameters.items():
            value = stored.get(name) if stored is not None else None
            value = torch.empty(shape, dtype=trace.dtype, device="meta") if value is None else value
            owner, _, leaf = name.rpartition(".")
            nodes[owner].register_parameter(leaf, nn.Parameter(value, requires_grad=False))
        for name, value in (stored or {}).items():  # buffers, and tied names of parameters held above
            if name not in parameters:
                owner, _, leaf = name.rpartition(".")
                nodes[owner].register_buffer(leaf, value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"the reference was recorded in trace {self._trace_path} and cannot run here")


class _RecordedOwner(nn.Module):
    """A module of the recorded model inside :class:`RecordedModel`: holds that module's tensors."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a module of a recorded model cannot run here")


def _node(nodes: dict[str, nn.Module], name: str) -> nn.Module:
    """The tree's module ``name``, made (with its parents) when missing."""
    if name not in nodes:
        parent, _, child = name.rpartition(".")
        nodes[name] = _RecordedOwner()
        _node(nodes, parent).add_module(child, nodes[name])
    return nodes[name]


@dataclass
class _Recorded:
    """What a live Tracer on the reference would have given: records and first non-finite call."""

    records: list[Record]
    first_nonfinite: str | None


@dataclass
class Replay:
    """A trace prepared as the reference of one comparison."""

    trace: Trace
    module: RecordedModel
    records: list[Record]
    outputs: dict[str, torch.Tensor]
    call: Call
    notes: list[str]

    @classmethod
    def of(cls, trace: Trace, candidate: nn.Module, inputs: Any = None) -> "Replay":
        check_module("candidate", candidate)
        dtype = next((p.dtype for p in candidate.parameters() if p.is_floating_point()), trace.dtype)
        if dtype != trace.dtype:
            raise TypeError(f"candidate parameters are {dtype} but trace {trace.path} was recorded in {trace.dtype}; "
                            f"cast the candidate (candidate.to({trace.dtype})) or record the trace in {dtype}")
        account = check_fingerprint(trace.fingerprint, candidate, source=str(trace.path))
        device = next((str(p.device) for p in candidate.parameters()), "cpu")
        if device != trace.tensor_device:
            trace._cache.clear()
            trace.tensor_device = device
        recorded = trace.call()
        if inputs is not None:
            given = as_call(inputs)
            mine = flatten_tensors((given.args, dict(given.kwargs)))
            theirs = flatten_tensors((recorded.args, dict(recorded.kwargs)))
            if mine.keys() != theirs.keys() or any(
                    a.shape != b.shape or not torch.equal(a.to(b.dtype), b) for a, b in zip(mine.values(), theirs.values())):
                raise ValueError(f"the inputs given differ from those recorded in trace {trace.path}; "
                                 f"leave inputs out to run the candidate on the recorded inputs")
        notes = trace.notes() + [f"weights fingerprint: {account}"]
        if trace.meta["input_mutations"]:
            notes.append(f"the reference modified its inputs in place: {', '.join(trace.meta['input_mutations'])}")
        return cls(trace, RecordedModel(trace), trace.records(), trace.outputs(), recorded, notes)

    @property
    def recorded(self) -> _Recorded:
        return _Recorded(self.records, self.trace.meta["first_nonfinite"])

    @property
    def device(self) -> str:
        return self.trace.device

    def options(self, given: CompareOptions) -> CompareOptions:
        """The comparison options: those given, else the recorded pair's; tolerances widened by
        the rounding of compact storage. The reference side is not called: no call or output function."""
        from harness.metrics import DEFAULT_TOLERANCES, tolerance_for

        recorded = self.trace.compare_options()
        tolerances = given.tolerances or recorded.get("tolerances")
        module_tolerances = given.module_tolerances or recorded.get("module_tolerances", ())
        if self.trace.precision is not None:
            tolerances = {name: self.trace.widen(tolerance_for(name, overrides=tolerances))
                          for name in DEFAULT_TOLERANCES}
            module_tolerances = [(p, d, self.trace.widen(t)) for p, d, t in module_tolerances]
        return given.replace(
            rename=given.rename or recorded.get("rename", ()), tolerances=tolerances,
            module_tolerances=module_tolerances, rerun=given.rerun if given.rerun is not None else recorded.get("rerun"),
            allow_nonfinite=given.allow_nonfinite or recorded.get("allow_nonfinite", False),
            reference_call=None, reference_outputs=None)


