"""Backward parity: both models' gradients from the same loss, per parameter and per aligned module.

A port that agrees in the forward pass can still train differently (a ``detach`` on one branch, a
custom autograd function with a wrong backward, an in-place write through ``.data``). After the
forward comparison, :func:`compare_backward`:

1. Loss. Each side runs forward again with gradients on, on its own copy of the inputs (floating
   inputs become leaves that require grad). The loss is, by default, the sum of every final output
   weighted elementwise by a standard-normal tensor of its shape drawn from a seeded generator:
   the same tensor on both sides, so both backward passes start from the same output gradient.
   A loss function per side (``output -> scalar``) replaces it.
2. Taps. Every module call the forward comparison aligned has its tensor inputs and outputs
   routed through an identity autograd function (a copy, so that in-place code downstream keeps
   working) whose backward records the gradient passing through it: at an output, the gradient
   with respect to that output from everything downstream; at an input, the module's own
   contribution to the input's gradient. The order in which a call's input gradients arrive is its
   place in backward order (inner modules finish their backward before the modules around them).
3. Gradients come from ``torch.autograd.grad`` with respect to every floating parameter and the
   input leaves: ``.grad`` of the models is never written, no optimizer runs, and parameters that
   do not require grad are switched on for the pass and switched back.
4. Parameters. The reference's gradients are brought into the candidate's layout by the weight
   map (its transforms are linear, so the gradient of a concatenation is the concatenation of the
   gradients) and compared with the candidate's, parameter by parameter. Without a map, equally
   named parameters are compared; models whose parameter names differ get an inferred map
   (:func:`harness.weights.infer_map`). A candidate parameter whose values differ from its
   sources' (a conv with its batch norm folded in) is not that tensor in another layout: its
   gradient is not compared, and a note lists it; nor is one mapped through a gather (a row's
   gradient sums the places that read it) or a folded norm (not linear).
   What counts as a module's output gradient is what flows back through the tensors it returns:
   a loss that reads a module's result through another channel (a hook, a list filled during the
   forward) bypasses the tap, so both sides must read the same tensors the same way.
5. Localization, as for the forward (:mod:`harness.localize`) with the direction reversed: a call
   fails when its output gradients, its input gradients or the gradients of the parameters in its
   subtree fail the tolerance. A failing call whose output gradients are bitwise equal to its
   twin's makes the error itself; when they differ and the call may be re-run, both twins run
   forward again on the reference's recorded inputs and backward from the reference's output
   gradient, and the error is made here when their input or parameter gradients still disagree;
   otherwise made here if the output gradients agree within tolerance, received if not. The
   culprit is the innermost call that makes the error (a call containing another such call
   ``contains`` it), the first in backward order. The first divergence is the first failing call in
   backward order.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from harness.align import Aligned, Match
from harness.checks import check_type, type_error
from harness.adapters import find_adapter
from harness.localize import Row, _cast_like, classify, _inputs_state, _leaf_pairs, _rerunnable, _worst_adapted
from harness.metrics import Metrics, Tolerance, measure
from harness.trace import ROOT, flatten_tensors, hookable_modules, map_tensors
from harness.weightmap import owner_of
from harness.weights import WeightMap

__all__ = ["BackwardResult", "BackwardRow", "ParameterGrad", "compare_backward", "check_backward", "check_loss",
           "LOSS_SEED"]

LOSS_SEED = 0
Loss = Callable[[Any], torch.Tensor]
LossOption = Loss | tuple[Loss, Loss] | None


# -- results --------------------------------------------------------------------------------------
@dataclass
class ParameterGrad:
    """The gradient error of one candidate parameter against its reference source(s)."""

    candidate: str
    reference: tuple[str, ...]
    transform: str
    shape: tuple[int, ...]
    metrics: Metrics
    tolerance: Tolerance
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics.to_dict()
        return {"candidate": self.candidate, "reference": list(self.reference), "transform": self.transform,
                "shape": list(self.shape), "max_abs": m["max_abs"], "max_rel": m["max_rel"],
                "rel_l2": m["rel_l2"], "cosine": m["cosine"], "passed": self.passed}


@dataclass
class BackwardRow(Aligned):
    """One aligned module call in the backward pass: the errors of its gradients."""

    match: Match
    tolerance: Tolerance
    output_grad: Metrics | None  # w.r.t. its outputs (from downstream)
    input_grad: Metrics | None  # its own contribution w.r.t. its inputs
    parameter_grad: Metrics | None  # worst parameter of its subtree
    parameter: str | None  # which one
    passed: bool
    order: int  # position in backward order
    status: str = "ok"
    reran: bool = False

    @property
    def metrics(self) -> Metrics:
        """The worst of its output, input and parameter gradient errors."""
        return _worst_of([m for m in (self.output_grad, self.input_grad, self.parameter_grad) if m is not None],
                         self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        worst = self.metrics.to_dict()
        shape = self.match.candidate.shape
        return {"candidate": self.candidate, "reference": self.reference, "call": self.call,
                "shape": list(shape) if shape is not None else None, "max_abs": worst["max_abs"], "rel_l2": worst["rel_l2"], "passed": self.passed,
                "status": self.status, "match": self.match.how, "reran": self.reran, "order": self.order,
                "output_grad": None if self.output_grad is None else self.output_grad.to_dict(),
                "input_grad": None if self.input_grad is None else self.input_grad.to_dict(),
                "parameter_grad": None if self.parameter_grad is None else
                {"parameter": self.parameter, **self.parameter_grad.to_dict()}}


@dataclass
class BackwardResult:
    """The backward comparison: the same kind of result as the forward one."""

    passed: bool
    first_divergence: str | None
    culprit: str | None
    rows: list[BackwardRow]  # in backward order
    parameters: list[ParameterGrad]
    loss: dict[str, Any]
    introduced: list[str] = field(default_factory=list)
    unmatched: dict[str, list[str]] = field(default_factory=lambda: {"candidate": [], "reference": []})
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def worst_parameter(self) -> ParameterGrad | None:
        if not self.parameters:
            return None
        return max(self.parameters, key=lambda p: (not p.passed, _ratio(p.metrics, p.tolerance)))

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "first_divergence": self.first_divergence, "culprit": self.culprit,
                "introduced": self.introduced, "loss": self.loss,
                "layers": [r.to_dict() for r in self.rows],
                "parameters": [p.to_dict() for p in self.parameters],
                "unmatched": self.unmatched, "notes": self.notes, "seconds": round(self.seconds, 4),
                "counts": {"aligned": len(self.rows), "failed": sum(not r.passed for r in self.rows),
                           "parameters": len(self.parameters),
                           "parameters_failed": sum(not p.passed for p in self.parameters)}}

    def lines(self) -> list[str]:
        """What the terminal report says about the backward."""
        worst = self.worst_parameter
        head = f"backward: {'PASS' if self.passed else 'FAIL'} -- {len(self.parameters)} parameter gradients"
        if worst is not None:
            head += (f", worst {worst.candidate} max_abs={worst.metrics.max_abs:.3e} "
                     f"rel_l2={worst.metrics.rel_l2:.3e}")
        head += f"; {len(self.rows)} aligned calls ({sum(not r.passed for r in self.rows)} failing)"
        lines = [head]
        if not self.passed:
            lines.append(f"backward first divergence (backward order): {self.first_divergence or '(none in aligned calls)'}")
            lines.append(f"backward culprit (its output gradients agree, its input or parameter gradients do not): "
                         f"{self.culprit or '(not localized)'}")
            failing = [p.candidate for p in self.parameters if not p.passed]
            if failing:
                lines.append(f"parameters with wrong gradients ({len(failing)}): {', '.join(failing[:6])}"
                             + (" ..." if len(failing) > 6 else ""))
        lines += [f"backward note: {n}" for n in self.notes]
        return lines


def _ratio(m: Metrics, tol: Tolerance) -> float:
    if m.shape_mismatch or m.nonfinite_mismatch:
        return float("inf")
    return m.max_abs / max(tol.bound(m.ref_absmax), 1e-300) if m.max_abs == m.max_abs else float("inf")


def _worst_of(metrics: Sequence[Metrics], tol: Tolerance) -> Metrics:
    if not metrics:
        nan = float("nan")
        return Metrics(nan, nan, nan, nan, nan)
    return max(metrics, key=lambda m: _ratio(m, tol))


# -- the loss -------------------------------------------------------------------------------------
def check_loss(loss: Any) -> tuple[Loss | None, Loss | None]:
    """``loss`` as one function per side (None: the default weighted sum of the outputs)."""
    if loss is None:
        return None, None
    if callable(loss):
        return loss, loss
    if isinstance(loss, (tuple, list)) and len(loss) == 2 and all(callable(f) for f in loss):
        return loss[0], loss[1]
    raise type_error("backward_loss", loss, "a function output -> scalar tensor, or a pair (candidate_fn, reference_fn)")


def check_backward(backward: Any, loss: Any, *, recorded: bool = False) -> None:
    """Raise a TypeError/ValueError for backward options that cannot work, before anything runs."""
    check_type("backward", backward, bool, what="True or False")
    if loss is not None and not backward:
        raise ValueError("backward_loss was given without backward=True; pass backward=True to compare gradients")
    check_loss(loss)
    if backward and recorded:
        raise ValueError("backward=True needs the reference model itself: a recorded trace cannot run backward; "
                         "compare against the reference module, or drop backward=True")


def _scalar(side: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        what = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"the {side} loss function returned {what}; it must return a scalar tensor "
                         f"(reduce it, e.g. loss.sum())")
    return value.reshape(())


def _default_losses(final: list[tuple[str, torch.Tensor, torch.Tensor]], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over the outputs of ``(output * W).sum()``, ``W`` seeded standard-normal, the same on both sides."""
    generator = torch.Generator().manual_seed(seed)
    cand_total: torch.Tensor | Any = 0
    ref_total: torch.Tensor | Any = 0
    for key, a, b in final:
        if not (a.is_floating_point() and b.is_floating_point()):
            continue
        if a.shape != b.shape:
            raise ValueError(f"final output {key!r} has shape {tuple(a.shape)} on the candidate and {tuple(b.shape)} "
                             f"on the reference: the default loss weights both with one tensor; give backward_loss="
                             f"(candidate_fn, reference_fn) reducing each side's output to a scalar")
        weight = torch.randn(tuple(b.shape), generator=generator, dtype=torch.float64)
        cand_total = cand_total + (a * weight.to(device=a.device, dtype=a.dtype)).sum()
        ref_total = ref_total + (b * weight.to(device=b.device, dtype=b.dtype)).sum()
    if not isinstance(cand_total, torch.Tensor):
        raise ValueError("the models return no floating outputs to build the default loss from; give backward_loss=")
    return cand_total, ref_total


# -- taps -----------------------------------------------------------------------------------------
class _Tap(torch.autograd.Function):
    """Identity (as a copy) whose backward hands the passing gradient to ``sink``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sink: Callable[[torch.Tensor], None]) -> torch.Tensor:
        ctx.sink = sink
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.sink(grad)
        return grad, None


@dataclass
class _CallGrads:
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = field(default_factory=dict)  # "out:leaf" -> shape
    order: int | None = None  # when its last input gradient arrived (or its output gradient)


class _Taps:
    """Hooks on the named modules of one model that tap each call's inputs and outputs."""

    def __init__(self, model: nn.Module, names: set[str], clock: list[int]) -> None:
        self.calls: dict[tuple[str, int], _CallGrads] = {}
        self.clock = clock
        self.handles = []
        modules = {(name or ROOT): m for name, m in hookable_modules(model, remove_duplicate=False)}
        for name in names:
            module = modules.get(name)
            if module is not None:
                self._hook(name, module)

    def _hook(self, name: str, module: nn.Module) -> None:
        counter = [0]
        stack: list[int] = []

        def tap(key: tuple[str, int], kind: str, path: str, x: torch.Tensor) -> torch.Tensor:
            if not (x.is_floating_point() and x.requires_grad and torch.is_grad_enabled()):
                return x
            grads = self.calls.setdefault(key, _CallGrads())
            grads.shapes[f"{kind}:{path}"] = (tuple(x.shape), x.dtype)

            def sink(g: torch.Tensor) -> None:
                store = grads.outputs if kind == "out" else grads.inputs
                store[path] = g.detach().clone() if path not in store else store[path] + g.detach()
                self.clock[0] += 1
                if kind == "in" or grads.order is None:
                    grads.order = self.clock[0]

            return _Tap.apply(x, sink)

        def pre(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            index = counter[0]
            counter[0] += 1
            stack.append(index)
            key = (name, index)

            def tap_input(path: str, t: torch.Tensor) -> torch.Tensor:
                return tap(key, "in", path, t)

            return (tuple(_tap_nested(a, f"args.{i}", tap_input) for i, a in enumerate(args)),
                    {k: _tap_nested(v, f"kwargs.{k}", tap_input) for k, v in kwargs.items()})

        def post(mod: nn.Module, args: tuple, output: Any) -> Any:
            key = (name, stack.pop() if stack else counter[0] - 1)
            return _tap_nested(output, "", lambda p, t: tap(key, "out", p, t))

        self.handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self.handles.append(module.register_forward_hook(post))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _tap_nested(value: Any, prefix: str, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with every tensor leaf replaced by ``fn(path, leaf)``; paths as :func:`flatten_tensors`."""
    def visit(v: Any, path: str) -> Any:
        if isinstance(v, torch.Tensor):
            return fn(path, v)
        join = (lambda k: f"{path}.{k}" if path else str(k))
        if isinstance(v, tuple) and hasattr(v, "_fields"):
            return type(v)(*(visit(x, join(i)) for i, x in enumerate(v)))
        if isinstance(v, (tuple, list)):
            return type(v)(visit(x, join(i)) for i, x in enumerate(v))
        if isinstance(v, dict):
            items = {k: visit(x, join(k)) for k, x in v.items()}
            if type(v) is dict:
                return items
            try:
                return type(v)(**items)
            except Exception:  # a mapping that cannot be rebuilt keeps its untapped tensors
                return v
        return v

    return visit(value, prefix)


# -- parameters -----------------------------------------------------------------------------------
_NOT_LINEAR = ("gather", "fold_norm")  # map steps a gradient is not brought through


class _ParamMap:
    """Reference gradients in candidate layout, through a weight map or by equal names."""

    def __init__(self, weights: WeightMap | None, cand_names: Sequence[str], ref_names: Sequence[str]) -> None:
        self.weights = weights
        if weights is not None:
            self.entries = {e.candidate: e for e in weights.entries if e.kind == "parameter"}
        else:
            common = set(ref_names)
            self.entries = {k: None for k in cand_names if k in common}
        self.cand_names, self.ref_names = list(cand_names), list(ref_names)

    def sources(self, key: str) -> tuple[str, ...]:
        e = self.entries[key]
        return (key,) if e is None else e.reference

    def transform(self, key: str) -> str:
        e = self.entries[key]
        return "identity" if e is None else e.transform

    def to_candidate(self, ref_grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.weights is None:
            return {k: ref_grads[k] for k in self.entries if k in ref_grads}
        usable = [e for e in self.weights.entries if e.kind == "parameter" and all(r in ref_grads for r in e.reference)]
        return WeightMap(entries=usable, unmatched={}).to_candidate(ref_grads)

    def not_carried(self) -> list[str]:
        """Parameters mapped through a step gradients do not pass through as values do: a gathered
        table (each of its rows' gradient is the sum over the places that read it) or a folded
        norm (not linear in the norm's tensors)."""
        return [k for k, e in self.entries.items() if e is not None and any(
            step["op"] in _NOT_LINEAR for step in e.steps)]

    def unmatched(self) -> dict[str, list[str]]:
        used = {r for k in self.entries for r in self.sources(k)}
        return {"candidate": [k for k in self.cand_names if k not in self.entries],
                "reference": [k for k in self.ref_names if k not in used]}


def _floating_params(model: nn.Module) -> dict[str, nn.Parameter]:
    return {k: p for k, p in model.named_parameters() if p.is_floating_point()}


class _GradsOn:
    """Every floating parameter requires grad inside; the flags are put back on exit."""

    def __init__(self, *models: nn.Module) -> None:
        self.params = {id(p): p for m in models for p in m.parameters() if p.is_floating_point()}

    def __enter__(self) -> "_GradsOn":
        self.flags = {k: p.requires_grad for k, p in self.params.items()}
        for p in self.params.values():
            p.requires_grad_(True)
        return self

    def __exit__(self, *exc: Any) -> None:
        for k, p in self.params.items():
            p.requires_grad_(self.flags[k])


# -- one side -------------------------------------------------------------------------------------
@dataclass
class _Side:
    loss: torch.Tensor
    params: dict[str, torch.Tensor]  # name -> gradient (zeros where unused)
    taps: _Taps


def _run_side(model: nn.Module, call: Any, run: Callable | None, names: set[str],
              clock: list[int]) -> tuple[Any, _Taps, list[torch.Tensor]]:
    """Forward with taps on a copy of the inputs whose floating tensors are leaves requiring grad."""
    taps = _Taps(model, names, clock)
    fresh = call.clone()
    fresh = type(fresh)(map_tensors(fresh.args, _leaf), map_tensors(dict(fresh.kwargs), _leaf))
    leaves = [t for t in flatten_tensors((fresh.args, dict(fresh.kwargs))).values() if t.requires_grad]
    try:
        with torch.enable_grad():
            out = run(model, fresh) if run else fresh(model)
    finally:
        taps.remove()
    return out, taps, leaves


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(True) if t.is_floating_point() else t


def _gradients(loss: torch.Tensor, model: nn.Module, leaves: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter gradients; the input leaves are targets too, so that every input tap runs."""
    params = _floating_params(model)
    if not loss.requires_grad:
        return {k: torch.zeros_like(p) for k, p in params.items()}
    grads = torch.autograd.grad(loss, list(params.values()) + leaves, allow_unused=True)[:len(params)]
    return {k: (torch.zeros_like(p) if g is None else g.detach()) for (k, p), g in zip(params.items(), grads)}


# -- the comparison -------------------------------------------------------------------------------
def compare_backward(
    candidate: nn.Module,
    reference: nn.Module,
    call: Any,
    rows: Sequence[Row],
    *,
    tolerance: Callable[[str], Tolerance],
    weights: WeightMap | None = None,
    candidate_call: Callable | None = None,
    reference_call: Callable | None = None,
    candidate_outputs: Callable | None = None,
    reference_outputs: Callable | None = None,
    loss: LossOption = None,
    rerun: Sequence[str] | None = None,
    seed: int = LOSS_SEED,
) -> BackwardResult:
    """Compare the two models' gradients (see the module docstring).

    ``rows``: the forward comparison's aligned calls (their matches and tolerances).
    ``tolerance``: module name -> the tolerance for gradients of that module's parameters.
    """
    from harness.api import _final_outputs
    from harness.weights import infer_map

    started = time.perf_counter()
    cand_loss_fn, ref_loss_fn = check_loss(loss)
    notes: list[str] = []
    cand_params, ref_params = _floating_params(candidate), _floating_params(reference)
    if weights is None and set(cand_params) != set(ref_params):
        weights = infer_map(candidate, reference, call, candidate_call=candidate_call, reference_call=reference_call)
        notes.append("parameter names differ: gradients paired through an inferred weight map")
    pmap = _ParamMap(weights, list(cand_params), list(ref_params))
    cand_names = {name or ROOT for name, _ in candidate.named_modules(remove_duplicate=False)}
    ref_names = {name or ROOT for name, _ in reference.named_modules(remove_duplicate=False)}
    confirmed = [r for r in rows if r.candidate in cand_names and r.reference in ref_names]  # not fused records
    clock = [0]
    with _GradsOn(candidate, reference):
        cand_out, cand_taps, cand_leaves = _run_side(candidate, call, candidate_call, {r.candidate for r in confirmed},
                                                     clock)
        ref_out, ref_taps, ref_leaves = _run_side(reference, call, reference_call, {r.reference for r in confirmed}, [0])
        if cand_loss_fn is None:
            final = _final_outputs(cand_out, ref_out, candidate_outputs, reference_outputs)
            cand_loss, ref_loss = _default_losses(final, seed)
        else:
            cand_loss = _scalar("candidate", cand_loss_fn(cand_out))
            ref_loss = _scalar("reference", ref_loss_fn(ref_out))
        cand_grads = _gradients(cand_loss, candidate, cand_leaves)
        ref_grads = _gradients(ref_loss, reference, ref_leaves)
        loss_metrics = measure(cand_loss.detach().reshape(1), ref_loss.detach().reshape(1))
        others = _other_values(pmap, cand_params, ref_params, tolerance)
        skipped = {*others, *pmap.not_carried()}
        parameters = _parameter_errors(pmap, {k: g for k, g in cand_grads.items() if k not in skipped}, ref_grads,
                                       tolerance)
        by_param = {p.candidate: p for p in parameters}
        calls = Counter(r.candidate for r in confirmed)
        brows = [_row(r, cand_taps, ref_taps, by_param, single=calls[r.candidate] == 1) for r in confirmed]
        brows.sort(key=lambda b: b.order)
        for i, b in enumerate(brows):
            b.order = i
        loss_tol = tolerance(ROOT)
        loss_ok = loss_metrics.passes(loss_tol)
        failing = [b for b in brows if not b.passed and b.match.how != "structure"]
        for b in brows:
            if not b.passed and b.match.how == "structure":
                b.status = "tentative"
        introduced: list[str] = []
        if failing:
            introduced = _localize(failing, ref_taps, pmap, tolerance, rerun)
    params_ok = all(p.passed for p in parameters)
    cand_loss, ref_loss = float(cand_loss.detach()), float(ref_loss.detach())
    notes += _notes(loss_ok, params_ok, failing, introduced, pmap.unmatched(), cand_loss, ref_loss)
    # a parameter whose gradient is exactly zero where its source's is not was cut off from the loss
    dead = [p.candidate for p in parameters if not p.passed and p.candidate in cand_grads
            and not bool(cand_grads[p.candidate].any())]
    if dead:
        notes.append(f"{len(dead)} candidate parameter(s) receive no gradient at all where their reference sources do "
                     f"(a detach, a no_grad block or a write through .data on their path?): {', '.join(dead[:5])}"
                     + (" ..." if len(dead) > 5 else ""))
    if pmap.not_carried():
        carried = pmap.not_carried()
        notes.append(f"{len(carried)} candidate parameters are mapped through a gather or a folded norm, which "
                     f"gradients do not pass through as values do: their gradients are not compared: "
                     f"{', '.join(carried[:5])}" + (" ..." if len(carried) > 5 else ""))
    if others:
        notes.append(f"{len(others)} candidate parameters hold other values than their reference sources (a batch "
                     f"norm folded into its conv, a changed weight): their gradients are not compared: "
                     f"{', '.join(others[:5])}" + (" ..." if len(others) > 5 else ""))
    return BackwardResult(
        passed=loss_ok and params_ok and not failing,
        first_divergence=failing[0].candidate if failing else None,
        culprit=introduced[0] if introduced else None,
        rows=brows,
        parameters=parameters,
        loss={"candidate": _number(cand_loss), "reference": _number(ref_loss), "passed": loss_ok,
              "kind": "default: outputs weighted by seeded standard-normal tensors" if cand_loss_fn is None else "given",
              "seed": seed if cand_loss_fn is None else None,
              **{k: v for k, v in loss_metrics.to_dict().items() if k in ("max_abs", "max_rel")}},
        introduced=introduced,
        unmatched=pmap.unmatched(),
        notes=notes,
        seconds=time.perf_counter() - started,
    )


def _number(value: float) -> float | str:
    """A float for JSON (which has no NaN/Inf): non-finite ones as text."""
    return value if math.isfinite(value) else str(value)


def _notes(loss_ok: bool, params_ok: bool, failing: list[BackwardRow], introduced: list[str],
           unmatched: dict[str, list[str]], cand_loss: float, ref_loss: float) -> list[str]:
    """What a reader needs besides the verdict: where no module could be blamed, what was not compared."""
    notes = []
    if not loss_ok:
        notes.append(f"the loss values differ: candidate {cand_loss:.17g}, reference {ref_loss:.17g}")
    if failing and not introduced:
        notes.append(f"no aligned call makes the gradient error: the output gradients of {failing[0].key} already "
                     f"differ; the loss functions, or code outside the aligned modules, differ in their gradients")
    if not params_ok and not failing:
        notes.append("parameter gradients differ but no aligned call's gradients do: the error is in code outside "
                     "the aligned modules, in a parameter used outside its module, or in a module run several "
                     "times (its parameter gradients sum over its calls)")
    if unmatched["candidate"]:
        notes.append(f"{len(unmatched['candidate'])} candidate parameters have no reference counterpart; their "
                     f"gradients are not compared: {', '.join(unmatched['candidate'][:5])}")
    return notes


def _measure(a: torch.Tensor, b: torch.Tensor) -> Metrics:
    """:func:`harness.metrics.measure`, short-cut for bitwise-equal gradients (twins that compute alike)."""
    if a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b):
        return Metrics(0.0, 0.0, 0.0, 1.0, float(b.detach().abs().max()) if b.numel() else 0.0)
    return measure(a, b)


def _owner(key: str) -> str:
    """The module holding parameter ``key`` (the root for a top-level one): whose tolerance applies."""
    return owner_of(key) or ROOT


def _other_values(pmap: _ParamMap, cand: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor],
                  tolerance: Callable[[str], Tolerance]) -> list[str]:
    """Candidate parameters whose values differ from their reference sources' (brought into the
    candidate's layout): not one tensor in two layouts, so their gradients need not agree (the
    kernel of a conv with its batch norm folded in scales its gradient by the norm's)."""
    with torch.no_grad():
        ref_in_cand = pmap.to_candidate({k: p.detach() for k, p in ref.items()})
        return [key for key, p in cand.items() if key in ref_in_cand and not _measure(
            p.detach(), ref_in_cand[key]).passes(tolerance(_owner(key)))]


def _parameter_errors(pmap: _ParamMap, cand: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor],
                      tolerance: Callable[[str], Tolerance]) -> list[ParameterGrad]:
    ref_in_cand = pmap.to_candidate(ref)
    out = []
    for key, grad in cand.items():
        if key not in ref_in_cand:
            continue
        tol = tolerance(_owner(key))
        m = _measure(grad, ref_in_cand[key])
        out.append(ParameterGrad(key, pmap.sources(key), pmap.transform(key), tuple(grad.shape), m, tol, m.passes(tol)))
    return out


def _grads_of(grads: _CallGrads | None, kind: str) -> dict[str, torch.Tensor]:
    """A call's recorded gradients of one kind; zeros for tapped tensors no gradient reached."""
    if grads is None:
        return {}
    store = grads.outputs if kind == "out" else grads.inputs
    out = {}
    for slot, (shape, dtype) in grads.shapes.items():
        k, _, path = slot.partition(":")
        if k == kind:
            out[path] = store[path] if path in store else torch.zeros(shape, dtype=dtype)
    return out


def _compare_leaves(cand: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], tol: Tolerance, *,
                    comparable_only: bool = False) -> Metrics | None:
    """The worst leaf's error; ``comparable_only``: leaves paired without a shape (or a layout
    adapter) in common are left out, and None when nothing is left to compare."""
    pairs = _leaf_pairs(cand, ref) if cand and ref else []
    if comparable_only:
        pairs = [(k, a, b) for k, a, b in pairs if a.shape == b.shape or find_adapter(a, b) is not None]
    if not pairs:
        return None
    if all(a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b) for _, a, b in pairs):
        return max((_measure(a, b) for _, a, b in pairs), key=lambda m: m.ref_absmax)
    _, metrics, _, _, _ = _worst_adapted(pairs, tol)
    return metrics


def _subtree(name: str, keys: Sequence[str]) -> list[str]:
    if name == ROOT:
        return list(keys)
    return [k for k in keys if k.startswith(f"{name}.")]


def _row(r: Row, cand_taps: _Taps, ref_taps: _Taps, by_param: Mapping[str, ParameterGrad], *,
         single: bool) -> BackwardRow:
    """``single``: the module runs once, so its parameters' gradients are this call's alone (a module
    run per frame accumulates them over its calls: they are shown, and judged per call only by re-runs)."""
    c = cand_taps.calls.get((r.candidate, r.match.candidate.call))
    f = ref_taps.calls.get((r.reference, r.match.reference.call))
    tol = r.tolerance
    out_m = _compare_leaves(_grads_of(c, "out"), _grads_of(f, "out"), tol)
    # Twins that agree on their outputs but were fed different values (a layer scale paired with
    # the drop-path after it) compute different functions: their input gradients need not agree.
    in_m = None
    if _inputs_state(r.match.candidate, r.match.reference, tol) != "differ":
        in_m = _compare_leaves(_grads_of(c, "in"), _grads_of(f, "in"), tol, comparable_only=True)
    params = [by_param[k] for k in _subtree(r.candidate, list(by_param))]
    worst = max(params, key=lambda p: _ratio(p.metrics, p.tolerance), default=None)
    passed = all(m is None or m.passes(tol) for m in (out_m, in_m)) and (not single or all(p.passed for p in params))
    order = c.order if c is not None and c.order is not None else 1 << 60
    return BackwardRow(r.match, tol, out_m, in_m, None if worst is None else worst.metrics,
                       None if worst is None else worst.candidate, passed, order)


def _localize(failing: list[BackwardRow], ref_taps: _Taps, pmap: _ParamMap,
              tolerance: Callable[[str], Tolerance], rerun: Sequence[str] | None) -> list[str]:
    """Set statuses (made here or received) and return the introducing calls in backward order."""
    def rerun_fails(b: BackwardRow) -> bool | None:
        if not _rerunnable(b.match.candidate, b.match.reference, rerun):
            return None
        ref_out = _grads_of(ref_taps.calls.get((b.reference, b.match.reference.call)), "out")
        return _rerun_fails(b, ref_out, pmap, tolerance)

    classify(failing, _out_state, rerun_fails)
    return list(dict.fromkeys(b.candidate for b in failing if b.status == "introduced"))


def _out_state(b: BackwardRow) -> str:
    m = b.output_grad
    if m is None or (m.max_abs == 0 and not m.shape_mismatch and not m.nonfinite_mismatch):
        return "equal"
    return "close" if m.passes(b.tolerance) else "differ"


def _rerun_side(module: nn.Module, args: Any, kwargs: Any, out_grads: dict[str, torch.Tensor],
                params: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
    """Forward ``module`` on copies of ``args``/``kwargs``, backward from ``out_grads`` (paired by leaf):
    (input gradients by path, parameter gradients by name)."""
    args = map_tensors(args, _leaf)
    kwargs = map_tensors(kwargs, _leaf)
    inputs = {**flatten_tensors(args, "args"), **flatten_tensors(kwargs, "kwargs")}
    inputs = {k: t for k, t in inputs.items() if t.requires_grad}
    with torch.enable_grad():
        out = module(*args, **kwargs)
    outs = {k: t for k, t in flatten_tensors(out).items() if t.requires_grad}
    pairs = _leaf_pairs(outs, out_grads)
    if not pairs or any(tuple(a.shape) != tuple(g.shape) for _, a, g in pairs):
        return None
    targets = list(inputs.values()) + list(params.values())
    if not targets:
        return None
    grads = torch.autograd.grad([a for _, a, _ in pairs], targets, [g.to(a.dtype) for _, a, g in pairs],
                                allow_unused=True)
    filled = [torch.zeros_like(t) if g is None else g.detach() for t, g in zip(targets, grads)]
    n = len(inputs)
    return dict(zip(inputs, filled[:n])), dict(zip(params, filled[n:]))


def _rerun_fails(b: BackwardRow, ref_out: dict[str, torch.Tensor], pmap: _ParamMap,
                 tolerance: Callable[[str], Tolerance]) -> bool | None:
    """Both twins' backward from the reference's output gradient, on the reference's inputs:
    True when their input or parameter gradients still disagree, None when they cannot re-run."""
    cand, ref = b.match.candidate, b.match.reference
    try:
        c = _rerun_side(cand.module, _cast_like(ref.args, cand.args), _cast_like(ref.kwargs, cand.kwargs),
                        ref_out, _floating_params(cand.module))
        r = _rerun_side(ref.module, ref.args, ref.kwargs, ref_out, _floating_params(ref.module))
    except Exception:  # a signature that only looked compatible: no verdict from re-running
        return None
    if c is None or r is None:
        return None
    tol = b.tolerance
    inputs = _compare_leaves(c[0], r[0], tol, comparable_only=True)
    if inputs is not None and not inputs.passes(tol):
        return True
    # parameter gradients of the two subtrees, in full-model names, through the map
    mapped = pmap.to_candidate({_full(ref.name, k): g for k, g in r[1].items()})
    for key, grad in ((_full(cand.name, k), g) for k, g in c[1].items()):
        if key in mapped and not _measure(grad, mapped[key]).passes(tolerance(key.rsplit(".", 1)[0])):
            return True
    return False


def _full(module: str, key: str) -> str:
    return key if module == ROOT else f"{module}.{key}"
