"""Sketches: a few hundred bytes per tensor that still tell how far two runs of a layer are apart.

A :class:`LayerSketch` keeps a tensor's shape, dtype, statistics (mean, std, absmax, L2 norm,
non-finite count), an exact slice of ``SLICE`` values at evenly spread positions, and a linear
random projection ``s = G C x / sqrt(K)`` of its values ``x`` (flattened, float64):

- ``C`` (only for tensors of more than ``BUCKETS`` elements) is a CountSketch: element ``i``
  is added, with a random sign, into one of ``BUCKETS`` buckets (by a random cyclic shift of
  each run of ``BUCKETS`` elements, see ``_Maps.hash``). ``E|Cx|^2 = |x|^2`` and
  ``Var |Cx|^2 <= 2|x|^4 / BUCKETS``. Smaller tensors skip it (``C`` is the identity).
- ``G`` is a fixed ``K x BUCKETS`` matrix of standard normals, so ``|s|^2 / |Cx|^2`` follows
  ``chi2(K) / K`` exactly, whatever ``x`` is.

Both maps come from fixed seeds, so ``s`` is linear in ``x`` and the same in every run, on every
machine: the sketch of a difference is the difference of the sketches, and
``|s_a - s_b| / |b|`` estimates the relative L2 error ``|a - b| / |b|`` of a fresh tensor ``a``
against a stored ``b`` without keeping ``b``.

Error bound (:func:`estimate`): with probability at least ``1 - CONFIDENCE_MISS`` over the
draw of the projection (for any fixed pair of tensors), ``|s| / |x|`` lies in ``[L, H]`` with
``L = sqrt(q_lo / K)``, ``H = sqrt(q_hi / K)`` from the chi-square quantiles at
``DELTA_G / 2`` and ``1 - DELTA_G / 2``, times ``sqrt(1 -/+ T)`` for the CountSketch where
Chebyshev's inequality gives ``P(| |Cx|^2 - |x|^2 | > T |x|^2) <= 2 / (BUCKETS T^2) = DELTA_C``.
The stored sketch is rounded to float32, which adds at most ``2^-24 |s_b| / |b|`` to the
estimate; the interval includes it. So the true relative L2 lies in
``[(est - f) / H, (est + f) / L]``.
"""

from __future__ import annotations

import base64
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["K", "BUCKETS", "SLICE", "LayerSketch", "Estimate", "sketch", "estimate", "bounds", "CONFIDENCE_MISS"]

K = 64
BUCKETS = 1 << 14
SLICE = 8
SEED = 0x5EED5
DELTA_G = 1e-5  # two-sided chi-square miss probability
DELTA_C = 1e-3  # CountSketch miss probability (Chebyshev)
T = math.sqrt(2.0 / (BUCKETS * DELTA_C))  # relative deviation of |Cx|^2 allowed: 0.35
CONFIDENCE_MISS = DELTA_G + DELTA_C
_STORE_ROUNDING = 2.0 ** -24  # float32 storage of the sketch


def _chi2_quantile(k: int, p: float) -> float:
    """Quantile of chi-square(k) by bisection on the regularized incomplete gamma function."""
    lo, hi = 0.0, 20.0 * k
    kk = torch.tensor(k / 2, dtype=torch.float64)
    for _ in range(200):
        mid = (lo + hi) / 2
        if float(torch.special.gammainc(kk, torch.tensor(mid / 2, dtype=torch.float64))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


_Q_LO = _chi2_quantile(K, DELTA_G / 2)
_Q_HI = _chi2_quantile(K, 1 - DELTA_G / 2)


def bounds(numel: int) -> tuple[float, float]:
    """``(L, H)``: ``|sketch| / |x|`` lies in this range except with probability ``CONFIDENCE_MISS``."""
    low, high = math.sqrt(_Q_LO / K), math.sqrt(_Q_HI / K)
    if numel > BUCKETS:
        low, high = low * math.sqrt(1 - T), high * math.sqrt(1 + T)
    return low, high


class _Maps:
    """The fixed projection and hash, generated once per process (and grown as tensors need)."""

    def __init__(self) -> None:
        self._gauss: torch.Tensor | None = None
        self._sign = torch.empty(0, BUCKETS, dtype=torch.float64)
        self._shift: list[int] = []

    def gauss(self) -> torch.Tensor:
        if self._gauss is None:
            g = torch.Generator().manual_seed(SEED)
            self._gauss = torch.randn(K, BUCKETS, generator=g, dtype=torch.float64)
        return self._gauss

    def hash(self, rows: int) -> tuple[torch.Tensor, list[int]]:
        """Signs and bucket shifts of the first ``rows`` rows of ``BUCKETS`` elements.

        Element ``j`` of row ``r`` (element ``r*BUCKETS + j`` of the tensor) goes, with its sign,
        into bucket ``(j + shift_r) mod BUCKETS``. Shifts are independent and uniform, so two
        elements of different rows share a bucket with probability ``1/BUCKETS`` (of one row:
        never), which is all the variance bound needs; a shifted add is much faster than a
        scatter. Each row has its own seed, so it is the same whatever tensors came before.
        """
        if self._sign.shape[0] < rows:
            signs = [self._sign]
            for r in range(self._sign.shape[0], rows):
                g = torch.Generator().manual_seed(SEED + 1 + r)
                signs.append((1 - 2 * torch.randint(0, 2, (1, BUCKETS), generator=g)).double())
                self._shift.append(int(torch.randint(0, BUCKETS, (1,), generator=g)))
            self._sign = torch.cat(signs)
        return self._sign[:rows], self._shift[:rows]


_MAPS = _Maps()


def _values(t: torch.Tensor) -> torch.Tensor:
    x = t.detach()
    if x.is_complex():
        x = torch.view_as_real(x)
    return x.reshape(-1).to(device="cpu", dtype=torch.float64)


def _finite(x: torch.Tensor) -> torch.Tensor:
    # a finite sum means every element is finite (isfinite itself is slow on CPU)
    return x if bool(torch.isfinite(x.sum())) else torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype))


def _project(x: torch.Tensor) -> torch.Tensor:
    n = x.numel()
    g = _MAPS.gauss()
    if n <= BUCKETS:
        return g[:, :n] @ x / math.sqrt(K)
    rows = -(-n // BUCKETS)
    sign, shift = _MAPS.hash(rows)
    y = torch.zeros(BUCKETS, dtype=torch.float64)
    for r in range(rows):  # in-place multiply-adds: fresh temporaries cost more than the arithmetic
        seg, sg = x[r * BUCKETS:(r + 1) * BUCKETS], sign[r]
        c, head = shift[r], min(seg.numel(), BUCKETS - shift[r])
        y[c:c + head].addcmul_(seg[:head], sg[:head])
        y[:seg.numel() - head].addcmul_(seg[head:], sg[head:seg.numel()])
    return g @ y / math.sqrt(K)


def sketch(t: torch.Tensor) -> torch.Tensor:
    """The float64 sketch (``K`` values) of ``t``; linear in ``t``. Non-finite values count as 0."""
    return _project(_finite(_values(t)))


def _slice_positions(n: int) -> list[int]:
    if n <= SLICE:
        return list(range(n))
    return [(i * (n - 1)) // (SLICE - 1) for i in range(SLICE)]


def _round(v: float) -> float:
    return float(f"{v:.12g}") if math.isfinite(v) else v


@dataclass(frozen=True)
class LayerSketch:
    """Shape, dtype, statistics, exact slice and projection sketch of one tensor."""

    shape: tuple[int, ...]
    dtype: str
    mean: float
    std: float
    absmax: float
    norm: float
    nonfinite: int
    slice: tuple[float, ...]
    sketch: tuple[float, ...]  # float32-rounded
    # how far the run itself was from exact: (rel L2 upper bound, slice max_abs, statistics max_abs)
    # where the model computes some operations in a narrower float (see :func:`own_rounding`)
    rounding: tuple[float, float, float] | None = None

    @classmethod
    def of(cls, t: torch.Tensor) -> "LayerSketch":
        return cls.measured(t)[0]

    @classmethod
    def measured(cls, t: torch.Tensor) -> tuple["LayerSketch", torch.Tensor]:
        """The sketch of ``t`` and its projection before float32 rounding (two of them give a
        distance free of the storage rounding)."""
        x = _values(t)
        f = _finite(x)
        nonfinite = 0 if f is x else int(x.numel() - torch.isfinite(x).sum())
        if nonfinite:
            f = x[torch.isfinite(x)]
        n = f.numel()
        if n:
            # from sums and dot products: elementwise temporaries are the slow part on CPU
            mean, sumsq = float(f.sum()) / n, float(torch.dot(f, f))
            var = max(sumsq - n * mean * mean, 0.0) / max(n - 1, 1)
            if var < 1e-6 * mean * mean:  # cancellation: centre first
                centered = f - mean
                var = float(torch.dot(centered, centered)) / max(n - 1, 1)
            low, high = torch.aminmax(f)
            std, absmax, norm = math.sqrt(var), float(max(-low, high)), math.sqrt(sumsq)
        else:
            mean = std = absmax = norm = 0.0
        s = _project(x if f is x else torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype)))
        # statistics to 12 significant digits (what the JSON form keeps), the slice exactly
        mean, std, absmax, norm = (_round(v) for v in (mean, std, absmax, norm))
        return cls(tuple(t.shape), str(t.dtype).removeprefix("torch."), mean, std, absmax, norm, nonfinite,
                   tuple(float(x[i]) for i in _slice_positions(x.numel())), tuple(s.float().tolist())), s

    def to_json(self) -> dict[str, Any]:
        raw = torch.tensor(self.sketch, dtype=torch.float32).numpy().astype("<f4").tobytes()
        d = {"shape": list(self.shape), "dtype": self.dtype,
             "stats": [_json_float(_round(v)) for v in (self.mean, self.std, self.absmax, self.norm)]
             + [self.nonfinite],
             "slice": [_json_float(v) for v in self.slice],
             "sketch": base64.b64encode(raw).decode("ascii")}
        if self.rounding is not None:
            d["rounding"] = list(self.rounding)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "LayerSketch":
        raw = base64.b64decode(d["sketch"])
        values = torch.frombuffer(bytearray(raw), dtype=torch.float32).tolist()
        mean, std, absmax, norm, nonfinite = d["stats"]
        rounding = tuple(_py_float(v) for v in d["rounding"]) if "rounding" in d else None
        return cls(tuple(d["shape"]), d["dtype"], _py_float(mean), _py_float(std), _py_float(absmax),
                   _py_float(norm), int(nonfinite), tuple(_py_float(v) for v in d["slice"]), tuple(values), rounding)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _json_float(v: float) -> Any:
    return v if math.isfinite(v) else repr(v)


def _py_float(v: Any) -> float:
    return float(v)


@dataclass(frozen=True)
class Estimate:
    """Estimated relative L2 of a fresh tensor against a stored sketch, with its bound."""

    rel_l2: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"rel L2 ~{self.rel_l2:.2e} (in [{self.low:.2e}, {self.high:.2e}] with p >= {1 - CONFIDENCE_MISS:.4f})"


def estimate(fresh: LayerSketch | torch.Tensor, stored: LayerSketch) -> Estimate:
    """``|a - b| / |b|`` estimated from the sketches, with the interval of the module docstring.

    ``fresh``: the new tensor or its sketch (an unrounded sketch from the tensor is more precise).
    """
    s_a = sketch(fresh) if isinstance(fresh, torch.Tensor) else torch.tensor(fresh.sketch, dtype=torch.float64)
    s_b = torch.tensor(stored.sketch, dtype=torch.float64)
    scale = stored.norm if stored.norm > 0 else 1.0  # an all-zero reference: absolute L2
    est = float(torch.linalg.vector_norm(s_a - s_b)) / scale
    low, high = bounds(stored.numel)
    # storage rounding of both sketches (a fresh tensor's own sketch is not rounded)
    rounded = float(torch.linalg.vector_norm(s_b)) + (0.0 if isinstance(fresh, torch.Tensor)
                                                      else float(torch.linalg.vector_norm(s_a)))
    floor = _STORE_ROUNDING * rounded / scale
    return Estimate(est, max(est - floor, 0.0) / high, (est + floor) / low)


# -- golden traces ---------------------------------------------------------------------------------
GOLDEN_FORMAT = "harness-golden-trace"
GOLDEN_VERSION = 1


class SketchTracer:
    """Forward hooks that sketch the primary output of every module call (nothing else is kept).

    A call whose output is a tensor already sketched (same object, unchanged: a container
    returning its last child's output, an ``Identity``) is stored as ``{"same": key}``.
    ``rename``: rules applied to module names (to key a candidate's calls by reference names).
    """

    def __init__(self, model: torch.nn.Module, rename: Any = ()) -> None:
        from harness.align import apply_rename

        self.model, self.rename = model, list(rename)
        self._apply = apply_rename
        self.layers: dict[str, LayerSketch | str] = {}
        self.raw: dict[str, torch.Tensor] = {}  # each sketch's projection before float32 rounding
        self._counts: dict[str, int] = {}
        self._seen: dict[int, tuple[Any, int, str]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> "SketchTracer":
        import weakref

        from harness.trace import ROOT, flatten_tensors, hookable_modules

        def post(name: str):
            def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
                call = self._counts.get(name, 0)
                self._counts[name] = call + 1
                leaves = flatten_tensors(output)
                if not leaves:
                    return
                t = next(iter(leaves.values()))
                key = f"{name}#{call}"
                seen = self._seen.get(id(t))
                if seen is not None and seen[0]() is t and seen[1] == t._version:
                    self.layers[key] = seen[2]
                    return
                # outside any torch-function mode the run is under: a mode keeping float64 for the
                # model's own casts must not reach the sketch's (or see them as the model's)
                with torch._C.DisableTorchFunction():
                    self.layers[key], self.raw[key] = LayerSketch.measured(t)
                try:
                    self._seen[id(t)] = (weakref.ref(t), t._version, key)
                except TypeError:
                    pass

            return hook

        for name, module in hookable_modules(self.model):
            name = self._apply(name, self.rename) if name else ROOT
            self._handles.append(module.register_forward_hook(post(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def golden_trace(model: torch.nn.Module, call: Any, *, name: str, model_call: Any = None, outputs: Any = None,
                 rename: Any = (), rounding: bool = False) -> dict[str, Any]:
    """Run ``model`` on ``call`` (a :class:`harness.Call`) and return its golden-trace document.

    ``rounding``: also run it with the operations that compute in a narrower float kept in float64
    (a softmax given ``dtype=torch.float32``) and store, per layer, how far the run was from that
    exact one (:func:`own_rounding`): that rounding differs between machines (vectorized ``exp``
    and reductions differ by CPU), and :func:`diff_golden` allows for it. The document gains
    ``"rounding": {"ops": [...]}`` (empty when nothing narrows: then nothing is allowed).
    """
    from harness.report import environment
    from harness.trace import flatten_tensors

    def run(m: torch.nn.Module) -> Any:
        return model_call(m, call) if model_call else call(m)

    def final_of(out: Any) -> dict[str, torch.Tensor]:
        return dict(outputs(out)) if outputs else flatten_tensors(out)

    with torch.no_grad(), SketchTracer(model, rename) as tracer:
        final = final_of(run(model))
    layers = dict(tracer.layers)
    final_sketches = {k: LayerSketch.measured(v) for k, v in final.items()}
    ops: list[str] = []
    if rounding:
        layers, final_sketches, ops = own_rounding(model, run, final_of, rename, tracer, final_sketches)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    with torch.no_grad():
        params = [p.detach().double() for p in model.parameters() if p.is_floating_point()]
        weights = {"count": sum(p.numel() for p in params), "sumsq": _round(sum(float((p * p).sum()) for p in params)),
                   "sumabs": _round(sum(float(p.abs().sum()) for p in params))}
    return {
        "format": GOLDEN_FORMAT, "version": GOLDEN_VERSION, "name": name,
        "dtype": str(dtype).removeprefix("torch."),
        "sketch": {"k": K, "buckets": BUCKETS, "seed": SEED, "slice": SLICE},
        "versions": environment()["versions"], "weights": weights,
        **({"rounding": {"ops": ops}} if rounding else {}),
        "outputs": {k: v[0] for k, v in final_sketches.items()},
        "layers": layers,
    }


def own_rounding(model: torch.nn.Module, run: Any, final_of: Any, rename: Any, tracer: SketchTracer,
                 final: dict[str, tuple[LayerSketch, torch.Tensor]]) -> tuple[dict, dict, list[str]]:
    """The sketches of ``tracer``'s run (and its ``final`` outputs) with their ``rounding`` set: the
    distance of each from a run of ``model`` whose narrowing operations keep float64, as an upper
    bound of the relative L2 (from the unrounded projections, at the low end of the sketch interval),
    and the largest change of a slice value and of a statistic. Returns the layers, the outputs and
    the names of the narrowing operations (none: the sketches come back unchanged)."""
    from harness.noise import _run_float64

    ops: list[str] = []
    with torch.no_grad(), SketchTracer(model, rename) as exact:
        exact_final = final_of(_run_float64(model, run, narrow=ops, widen=True))
    if not ops:
        return dict(tracer.layers), final, ops

    def with_rounding(run_sketch: LayerSketch, raw: torch.Tensor, other: tuple[LayerSketch, torch.Tensor] | None):
        if other is None or other[0].shape != run_sketch.shape:
            return run_sketch
        e, e_raw = other
        low, _ = bounds(e.numel)
        rel = float(torch.linalg.vector_norm(raw - e_raw)) / ((e.norm if e.norm > 0 else 1.0) * low)
        off_slice = max((abs(a - b) for a, b in zip(run_sketch.slice, e.slice)), default=0.0)
        off_stats = max(abs(getattr(run_sketch, k) - getattr(e, k)) for k in ("mean", "std", "absmax"))
        off_stats = max(off_stats, abs(run_sketch.norm - e.norm) / math.sqrt(max(e.numel, 1)))
        found = tuple(float(f"{v * 1.01:.3g}") for v in (rel, off_slice, off_stats))
        return dataclasses.replace(run_sketch, rounding=found) if any(found) else run_sketch

    layers = {k: v if isinstance(v, str) else with_rounding(v, tracer.raw[k], (
        exact.layers[k], exact.raw[k]) if isinstance(exact.layers.get(k), LayerSketch) else None)
        for k, v in tracer.layers.items()}
    outputs = {k: (with_rounding(s, raw, LayerSketch.measured(exact_final[k]) if k in exact_final else None), raw)
               for k, (s, raw) in final.items()}
    return layers, outputs, ops


def dump_golden(doc: dict[str, Any]) -> str:
    """JSON text with one layer per line, so that ``git diff`` shows which layers changed."""
    import json

    def layer(v: LayerSketch | str) -> Any:
        return {"same": v} if isinstance(v, str) else v.to_json()

    head = {k: v for k, v in doc.items() if k not in ("layers", "outputs")}
    lines = [json.dumps(head, sort_keys=True)[:-1] + ","]
    for section in ("outputs", "layers"):
        items = [f"  {json.dumps(k)}: {json.dumps(layer(v), separators=(',', ':'))}" for k, v in doc[section].items()]
        lines.append(f' "{section}": {{\n' + ",\n".join(items) + "\n }" + ("," if section == "outputs" else ""))
    return "\n".join(lines) + "\n}\n"


def load_golden(text: str, *, source: str) -> dict[str, Any]:
    import json

    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"golden trace {source} is not valid JSON: {exc}") from None
    if doc.get("format") != GOLDEN_FORMAT:
        raise ValueError(f"{source} is not a golden trace (format {doc.get('format')!r}, expected {GOLDEN_FORMAT!r})")
    settings = {"k": K, "buckets": BUCKETS, "seed": SEED, "slice": SLICE}
    if doc["sketch"] != settings:
        raise ValueError(f"golden trace {source} was sketched with {doc['sketch']}, this harness sketches with "
                         f"{settings}: regenerate it")

    def layer(v: dict[str, Any]) -> LayerSketch | str:
        return v["same"] if "same" in v else LayerSketch.from_json(v)

    doc["outputs"] = {k: LayerSketch.from_json(v) for k, v in doc["outputs"].items()}
    doc["layers"] = {k: layer(v) for k, v in doc["layers"].items()}
    return doc


@dataclass(frozen=True)
class Moved:
    """A layer of a fresh run that differs from its golden."""

    key: str
    why: str
    estimate: Estimate | None = None


@dataclass
class GoldenDiff:
    """What changed between a golden trace and a fresh run."""

    moved: list[Moved]
    missing: list[str]  # golden layers the fresh run lacks
    new: list[str]  # fresh layers the golden lacks
    versions: list[str]  # "timm 1.0.31 -> 1.0.32"
    notes: list[str]

    @property
    def changed(self) -> bool:
        return bool(self.moved or self.missing or self.new)

    def format(self, *, limit: int = 12) -> str:
        lines = []
        if self.moved:
            lines.append(f"{len(self.moved)} layer(s) moved, in execution order (the first is where the change enters):")
            lines += [f"  {m.key}: {m.why}" for m in self.moved[:limit]]
            if len(self.moved) > limit:
                lines.append(f"  ... and {len(self.moved) - limit} more")
        for label, keys in (("missing from the fresh run", self.missing), ("new in the fresh run", self.new)):
            if keys:
                lines.append(f"{len(keys)} layer(s) {label}: {', '.join(keys[:limit])}{' ...' if len(keys) > limit else ''}")
        if self.versions:
            lines.append(f"versions changed since the golden was recorded: {', '.join(self.versions)}")
        lines += self.notes
        return "\n".join(lines) if lines else "no layer moved"


def _resolve(layers: dict[str, LayerSketch | str], key: str) -> LayerSketch | None:
    v = layers.get(key)
    for _ in range(len(layers)):
        if not isinstance(v, str):
            return v
        v = layers.get(v)
    return None


_NO_ROUNDING = (0.0, 0.0, 0.0)


def _allowance(fresh: LayerSketch, gold: LayerSketch, gold_known: bool) -> tuple[float, float, float]:
    """How far two runs may be apart by their own rounding: each run's distance from the exact one
    (the triangle inequality). A golden recorded without it is taken to round as the fresh run does
    within a factor 2, any element by as much as the relative L2 of the whole (which elements round
    most differs between machines)."""
    f = fresh.rounding or _NO_ROUNDING
    if gold.rounding or gold_known:
        g = gold.rounding or _NO_ROUNDING
    else:
        g = (2 * f[0], 2 * max(f[1], f[0] * gold.absmax), 2 * max(f[2], f[0] * gold.absmax))
    return f[0] + g[0], f[1] + g[1], f[2] + g[2]


def _compare_layer(key: str, fresh: LayerSketch, gold: LayerSketch, atol: float, rtol: float,
                   allow: tuple[float, float, float] = _NO_ROUNDING) -> Moved | None:
    if fresh.shape != gold.shape or fresh.dtype != gold.dtype:
        return Moved(key, f"shape/dtype {list(fresh.shape)} {fresh.dtype}, golden {list(gold.shape)} {gold.dtype}")
    est = estimate(fresh, gold)
    bound = atol + rtol * gold.absmax
    worst_slice = max((abs(a - b) for a, b in zip(fresh.slice, gold.slice) if not (a != a and b != b)), default=0.0)
    stats = {"mean": (fresh.mean, gold.mean), "std": (fresh.std, gold.std), "absmax": (fresh.absmax, gold.absmax),
             "norm": (fresh.norm / math.sqrt(max(fresh.numel, 1)), gold.norm / math.sqrt(max(gold.numel, 1)))}
    off_stats = [k for k, (a, b) in stats.items() if not abs(a - b) <= bound + allow[2]]
    if est.low > rtol + allow[0] or worst_slice > bound + allow[1] or off_stats or fresh.nonfinite != gold.nonfinite:
        parts = [str(est), f"slice max_abs {worst_slice:.2e} (bound {bound + allow[1]:.1e})"]
        if off_stats:
            parts.append(f"statistics moved: {', '.join(off_stats)}")
        if fresh.nonfinite != gold.nonfinite:
            parts.append(f"{fresh.nonfinite} non-finite values, golden {gold.nonfinite}")
        return Moved(key, "; ".join(parts), est)
    return None


def diff_golden(fresh: dict[str, Any], golden: dict[str, Any], *, common_only: bool = False) -> GoldenDiff:
    """Compare a fresh golden-trace document with the stored one (tolerances: the dtype's policy).

    A layer moved when its relative L2 change exceeds the dtype's rtol even at the low end of the
    sketch's interval, or a slice value or statistic moved beyond ``atol + rtol * absmax``; where
    either document carries its own rounding (:func:`own_rounding`), each bound is widened by the
    two runs' distances from the exact run, and layers within them are only counted in a note.
    ``common_only``: compare only the layers both have (a candidate against its reference's golden:
    modules present on one side only are expected).
    """
    from harness.metrics import tolerance_for

    tol = tolerance_for(golden["dtype"])
    known = "rounding" in golden
    moved: list[Moved] = []
    forgiven = 0

    def judge(key: str, a: LayerSketch, b: LayerSketch) -> None:
        nonlocal forgiven
        if not (m := _compare_layer(key, a, b, tol.atol, tol.rtol)):
            return
        allow = _allowance(a, b, known)
        if allow != _NO_ROUNDING and not _compare_layer(key, a, b, tol.atol, tol.rtol, allow):
            forgiven += 1
        else:
            moved.append(_compare_layer(key, a, b, tol.atol, tol.rtol, allow) or m)

    for key in fresh["layers"]:
        if key in golden["layers"]:
            a, b = _resolve(fresh["layers"], key), _resolve(golden["layers"], key)
            if a is not None and b is not None:
                judge(key, a, b)
    for key, gold in golden["outputs"].items():
        if key in fresh["outputs"]:
            judge(f"final output {key!r}", fresh["outputs"][key], gold)
    missing, new = [], []
    if not common_only:
        missing = [k for k in golden["layers"] if k not in fresh["layers"]]
        missing += [f"final output {k!r}" for k in golden["outputs"] if k not in fresh["outputs"]]
        new = [k for k in fresh["layers"] if k not in golden["layers"]]
    versions = [f"{k} {golden['versions'].get(k)} -> {v}" for k, v in fresh["versions"].items()
                if golden["versions"].get(k) != v]
    notes = []
    if forgiven:
        ops = sorted({*fresh.get("rounding", {}).get("ops", ()), *golden.get("rounding", {}).get("ops", ())})
        notes.append(f"{forgiven} layer(s) differ from the golden only within the reference's own rounding, not "
                     f"counted as moved: operations computing in a narrower float than the model "
                     f"({', '.join(ops) or 'unnamed'}) round differently on another machine")
    if fresh["dtype"] != golden["dtype"]:
        notes.append(f"the fresh run is {fresh['dtype']}, the golden {golden['dtype']}")
    fw, gw = fresh["weights"], golden["weights"]
    if fw["count"] != gw["count"] or abs(fw["sumsq"] - gw["sumsq"]) > 1e-9 * gw["sumsq"]:
        notes.append(f"the weights differ from the golden's ({fw['count']} values, sum of squares {fw['sumsq']:.10g}; "
                     f"golden {gw['count']}, {gw['sumsq']:.10g})")
    return GoldenDiff(moved, missing, new, versions, notes)
