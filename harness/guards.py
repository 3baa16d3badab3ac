"""Guards around a comparison: checks before it runs, and what it must leave as it found it.

- Up front: both models on the same device(s) and not on ``meta`` (:func:`check_devices`), both
  with floating parameters of one dtype (:func:`check_dtypes`).
- The tolerance dtype (:func:`comparison_dtype`): the reference's (else the candidate's) floating
  parameter dtype; a model without one (parameter-free, buffers only) is judged by the most
  precise floating dtype of the final outputs, else of the inputs, else float32. The most precise
  one, so that a float64 comparison is never waved through at float32 tolerance.
- Unchanged models (:class:`ModelState`): every buffer of both models is copied before the
  comparison and restored afterwards (also when it raises), with each module's ``training`` flag
  and every parameter or buffer a forward replaced by another tensor object. Buffers are compared
  bit by bit (version counters miss BatchNorm's kernel updates) and only changed ones written
  back, so a comparison in eval mode writes nothing; one in train mode undoes the BatchNorm
  running statistics and ``num_batches_tracked`` that its forward passes and culprit re-runs
  advanced. Parameters are not copied (that would double the weights' memory): one changed in
  place by a forward (its version counter moved) cannot be restored, and the report says so. A
  comparison of models in train mode says so in the report (:func:`train_mode_notes`).
- Silenced branches (:func:`silenced_notes`): a reference holding norm weights, layer weights or
  layer scales of all zeros (a zero-initialized last norm: timm's ``zero_init_last``) is named in
  the report, passing or not: the branches they end add zeros, and an error in them cannot show.
- Non-determinism (:func:`determinism_notes`): only when a comparison fails, each side is run once
  more on a fresh copy of the same inputs, from the restored state and without reseeding; outputs
  that differ from the traced run's are named in the report, and the diagnosis keeps only the
  findings read off the modules' settings: the values differ by random draws, not by a cause an
  operation could be blamed for. A passing comparison costs nothing.
  A reference whose traced forward drew from a global generator (torch's, Python's ``random``,
  numpy's: :class:`RandomDraws`) gets no noise floor: a float64 run of it would differ by its
  random draws, not by rounding.
- Non-finite outputs (:func:`nonfinite_notes`): NaN/Inf on one side only is a disagreement, said
  as such; agreeing NaN/Inf are said to prove nothing.
- A model's own forward that raises (:func:`run_forward`): :class:`ForwardFailed` names the side and
  the inputs' shapes and dtypes; inputs its signature does not take: :class:`WrongArguments`, with
  the fix.
- ``torch.inference_mode()`` around a comparison is left for the comparison's duration (traces
  need version counters, which inference tensors lack); gradients stay off all the same.
- ``mode="auto"``: a full trace that the memory budget (:mod:`harness.memory`) refuses is
  retried in summary mode, and the report says so.

:func:`preserves_models` applies all of them but the dtype choice to :func:`harness.compare`,
which calls :func:`check_dtypes`, :func:`comparison_dtype` and :func:`nonfinite_notes` itself.
"""

from __future__ import annotations

import functools
import inspect
import random
import sys
from itertools import chain
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from harness.checks import one_line
from harness.memory import TraceTooLarge
from harness.metrics import DEFAULT_TOLERANCES, Metrics, measure
from harness.pairs import Call, as_call
from harness.trace import _version, eager_module, flatten_tensors, output_leaves, untraceable_notes

__all__ = ["check_devices", "check_dtypes", "parameter_dtype", "comparison_dtype", "ModelState", "same_bits", "RandomDraws",
           "ForwardFailed", "WrongArguments", "run_forward",
           "train_mode_notes", "silenced_notes", "determinism_notes", "nonfinite_notes", "preserves_models"]

_SHOWN = 5


# -- up front ------------------------------------------------------------------------------------
def _devices(model: nn.Module) -> set[torch.device]:
    return {t.device for t in chain(model.parameters(), model.buffers())}


def _names(devices: set[torch.device]) -> str:
    return ", ".join(sorted(str(d) for d in devices)) or "no tensors"


def check_devices(candidate: nn.Module, reference: nn.Module) -> None:
    """Raise a ValueError naming both devices when the models cannot run on the same inputs."""
    cand, ref = _devices(candidate), _devices(reference)
    for side, devices in (("candidate", cand), ("reference", ref)):
        if any(d.type == "meta" for d in devices):
            raise ValueError(
                f"the {side} has tensors on the meta device (candidate on {_names(cand)}, reference on "
                f"{_names(ref)}): meta tensors hold no values; load real weights first "
                f"(load_state_dict(..., assign=True))"
            )
    if cand and ref and not cand & ref:
        raise ValueError(
            f"the candidate is on {_names(cand)} but the reference is on {_names(ref)}; move both to one device "
            f"(model.to(device)) and give the inputs on it"
        )


def parameter_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the first floating parameter, None for a model without one."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def check_dtypes(candidate: nn.Module, reference: nn.Module) -> None:
    cand, ref = parameter_dtype(candidate), parameter_dtype(reference)
    if cand is not None and ref is not None and cand != ref:
        raise TypeError(
            f"candidate parameters are {cand} but reference parameters are {ref}; build both "
            f"in one dtype (pair.build(dtype=...) or model.to(dtype)) so both see the same inputs"
        )


def _most_precise(tensors: Iterable[torch.Tensor]) -> torch.dtype | None:
    known = {t.dtype for t in tensors if t.is_floating_point()
             and str(t.dtype).removeprefix("torch.") in DEFAULT_TOLERANCES}
    return min(known, key=lambda d: torch.finfo(d).eps, default=None)


def comparison_dtype(
    candidate: nn.Module, reference: nn.Module, call: Call,
    final: Sequence[tuple[str, torch.Tensor, torch.Tensor]] = (),
) -> torch.dtype:
    """The dtype whose tolerance judges the comparison (see the module docstring)."""
    for model in (reference, candidate):
        if (dtype := parameter_dtype(model)) is not None:
            return dtype
    inputs = flatten_tensors(call.args, "args") | flatten_tensors(dict(call.kwargs), "kwargs")
    return (_most_precise(t for _, a, b in final for t in (a, b)) or _most_precise(inputs.values())
            or torch.float32)


# -- unchanged models ----------------------------------------------------------------------------
_INTS = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` as integers of the same width: equal iff bitwise equal (NaN payloads and -0.0 included)."""
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.view(_INTS[t.element_size()]) if t.is_floating_point() else t


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same bits (dtype and shape included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    try:
        return bool(torch.equal(_bits(a), _bits(b)))
    except (RuntimeError, TypeError, KeyError):  # layouts without a bit view (sparse, quantized)
        return bool(torch.equal(a, b))


class ModelState:
    """What a comparison must leave as it found it, for ``models``; :meth:`restore` puts it back.

    Buffers are copied and restored bit by bit; parameters are kept by identity and version
    counter, which every in-place op bumps (a copy of every weight would double the models'
    memory: 2.8 GB more for a float32 ConvNeXt-XL pair). :meth:`changed_parameters` names those a
    forward changed in place, which cannot be undone. ``training`` flags are restored too.
    """

    def __init__(self, *models: nn.Module) -> None:
        self._flags = [(m, m.training) for model in models for m in model.modules()]
        self._buffers: list[tuple[dict, str, torch.Tensor, torch.Tensor]] = []
        self._parameters: list[tuple[dict, str, torch.Tensor, int | None, int, str]] = []
        copies: dict[int, torch.Tensor] = {}  # one copy per buffer, however often it is shared
        with torch.no_grad():
            for index, model in enumerate(models):
                for prefix, module in model.named_modules():
                    for name, t in module._parameters.items():
                        if t is not None:
                            qualified = f"{prefix}.{name}" if prefix else name
                            self._parameters.append((module._parameters, name, t, _version(t), index, qualified))
                    for name, t in module._buffers.items():
                        if t is not None:
                            copy = copies.get(id(t))
                            if copy is None:
                                copy = copies[id(t)] = t.detach().clone()
                            self._buffers.append((module._buffers, name, t, copy))

    def restore(self) -> None:
        """Put back every replaced tensor and the values of every changed buffer; reset ``training``."""
        with torch.no_grad():
            for slots, name, t, copy in self._buffers:
                _put_back(slots, name, t)
                if not same_bits(t.detach(), copy):
                    t.detach().copy_(copy)
            for slots, name, t, *_ in self._parameters:
                _put_back(slots, name, t)
        for module, training in self._flags:
            module.training = training

    def changed_parameters(self) -> dict[int, list[str]]:
        """Per model (by position), the parameters changed in place since the snapshot."""
        changed: dict[int, list[str]] = {}
        for _, _, t, version, index, qualified in self._parameters:
            if version is not None and _version(t) != version:
                changed.setdefault(index, []).append(qualified)
        return changed


def _put_back(slots: Any, name: str, t: torch.Tensor) -> None:
    """``slots[name] = t`` where a forward replaced it (or removed it); a scripted module's slots
    are a wrapper with item access only, so they are read and written by item."""
    try:
        if slots[name] is not t:
            slots[name] = t
    except (KeyError, RuntimeError):
        slots[name] = t


def _training(model: nn.Module) -> list[str]:
    """Modules in train mode whose code reads the flag: a fresh Identity or activation is in train
    mode too, and computes the same in either."""
    from harness.diagnose import reads_training  # diagnose imports this module

    return [name or "<root>" for name, m in model.named_modules() if m.training and reads_training(m)]


def train_mode_notes(candidate: nn.Module, reference: Any) -> list[str]:
    """One note naming the modules in train mode on each side; none when both are in eval mode."""
    sides = []
    for side, model in (("candidate", candidate), ("reference", reference)):
        names = _training(model) if isinstance(model, nn.Module) else []
        if names:
            total = sum(1 for _ in model.modules())
            shown = ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")
            sides.append(f"the {side} has {len(names)} of {total} modules in train mode ({shown})")
    if not sides:
        return []
    return [f"compared in train mode: {'; '.join(sides)}. BatchNorm then normalizes with batch statistics and "
            f"Dropout draws random masks; call .eval() for a parity check (the models' state was restored afterwards)"]


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)


def _silencing(module: nn.Module, leaf: str) -> bool:
    """Whether parameter ``leaf`` of ``module`` scales what the module returns (a norm's or a
    layer's weight, a layer scale), so that all zeros make the branch it ends return nothing of its
    input. Biases, tables and tokens add values of their own: zeros there silence nothing."""
    if leaf == "weight":
        return isinstance(module, (*_NORMS, *_WEIGHTED)) or "norm" in type(module).__name__.lower()
    return leaf in ("gamma", "scale", "layer_scale") or leaf.startswith(("ls", "gamma_", "layer_scale"))


def silenced_notes(model: Any, side: str = "reference") -> list[str]:
    """One note naming the weights of ``model`` that are all zero where they scale a branch (a
    zero-initialized last norm of a residual branch, timm's ``zero_init_last``; a zero layer
    scale): such a branch adds zeros, so no error inside it, nor where it joins (an activation
    before or after the add), can show, and a port with one passes."""
    if not isinstance(model, nn.Module):
        return []
    zero = [f"{prefix}.{leaf}" if prefix else leaf for prefix, module in model.named_modules()
            for leaf, p in module.named_parameters(recurse=False)
            if p.is_floating_point() and p.numel() and _silencing(module, leaf) and not p.detach().any()]
    if not zero:
        return []
    shown = ", ".join(zero[:_SHOWN]) + (", ..." if len(zero) > _SHOWN else "")
    return [f"the {side} holds {len(zero)} weight(s) of all zeros that scale a branch ({shown}): those branches add "
            f"nothing, so no error inside them or where they join can show; compare with trained weights or ones "
            f"drawn at random (harness.randomize_(reference, generator) before the map is made; --randomize on the "
            f"command line)"]


def _label(key: str) -> str:
    return f"output {key!r}" if key else "the output"


# -- non-determinism -----------------------------------------------------------------------------



def _disagreement(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor]) -> str | None:
    """How two runs' outputs differ, or None when they are identical."""
    if first.keys() != second.keys():
        return f"different output structures ({sorted(first)} vs {sorted(second)})"
    for key, a in first.items():
        b = second[key]
        if a.shape != b.shape:
            return f"{_label(key)}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        if a.dtype != b.dtype or not same_bits(a.detach(), b.detach()):
            m = measure(a, b)
            differ = int((_bits(a.detach()) != _bits(b.detach())).sum()) if a.dtype == b.dtype else a.numel()
            return (f"max_abs={m.max_abs:.3e} in {_label(key)} ({differ} of {a.numel()} elements differ"
                    + (f", {m.nonfinite_mismatch} NaN/Inf on one run only" if m.nonfinite_mismatch else "") + ")")
    return None


def determinism_notes(sides: Sequence[tuple[str, nn.Module, Callable, Any, Callable | None]], call: Call,
                      state: ModelState | None = None) -> list[str]:
    """Run each side once more on a fresh copy of ``call`` and name those whose outputs changed.

    ``sides``: ``(name, model, run(model, call), first output, output extractor)``. ``state`` is
    restored before each run, so only randomness (not state a forward advances) can differ.
    """
    return [_nondeterminism_note(side, how) for side, how in _rerun_differences(sides, call, state).items()]


def _rerun_differences(sides: Sequence[tuple[str, nn.Module, Callable, Any, Callable | None]], call: Call,
                       state: ModelState | None) -> dict[str, str]:
    """Per side whose second run differs from its first, how (see :func:`determinism_notes`)."""
    differ = {}
    for side, model, run, first, extract in sides:
        if state is not None:
            state.restore()
        try:
            with torch.no_grad():
                second = run(model, call.clone())
            how = _disagreement(output_leaves(first, extract), output_leaves(second, extract))
        except Exception:  # a second run that cannot even complete says nothing about randomness
            continue
        if how is not None:
            differ[side] = how
    return differ


def _nondeterminism_note(side: str, how: str) -> str:
    return (f"the {side} is not deterministic: two runs on the same inputs differ by {how}; random numbers in "
            f"forward (Dropout in train mode, sampling) make a parity verdict meaningless: call .eval() or remove "
            f"the randomness")


def _not_blamed_on_values(report: Any, sides: list[str]) -> None:
    """A failing ``report`` of models whose ``sides`` draw random numbers in forward keeps only the
    findings read off the modules' settings (a dropout left in training, its ``p``): the others
    compare values that differ by random draws, and would name a cause that is not there."""
    report.nondeterministic = sides
    report.diagnosis = [f for f in report.diagnosis if f["kind"] == "attribute"]


class ForwardFailed(RuntimeError):
    """A model's own forward raised during a comparison: the message names the side, the error and
    the inputs' shapes and dtypes; the error itself is chained (``__cause__``)."""

    def __init__(self, side: str, error: BaseException, call: Call) -> None:
        leaves = {**flatten_tensors(call.args, "args"), **flatten_tensors(dict(call.kwargs), "kwargs")}
        shapes = ", ".join(f"{k} {tuple(t.shape)}" for k, t in leaves.items())
        super().__init__(f"the {side}'s forward raised {type(error).__name__}: {one_line(error)} "
                         f"(inputs: {shapes or 'none'}); check the inputs' shapes and dtypes{_dtypes(leaves)} "
                         f"against what the model takes, or the model's code")
        self.side = side


def _dtypes(leaves: Mapping[str, torch.Tensor]) -> str:
    """`` (float64)`` for inputs of one dtype, `` (args.0 float32, args.1 int64)`` otherwise."""
    names = {k: str(t.dtype).removeprefix("torch.") for k, t in leaves.items()}
    if len(set(names.values())) == 1:
        return f" ({next(iter(names.values()))})"
    return f" ({', '.join(f'{k} {d}' for k, d in names.items())})" if names else ""


def run_forward(side: str, model: nn.Module, call: Call, run: Callable[[nn.Module, Call], Any] | None) -> Any:
    """``run(model, call)`` (default ``call(model)``), whatever the model's own code raises raised as
    :class:`ForwardFailed`, its cause chained. Passed on unchanged: a memory budget's refusal (raised
    by the harness's hooks), inputs that do not fit the forward's signature (:class:`WrongArguments`)
    and a ``run`` that cannot be called as ``run(model, call)``: those are the caller's to fix."""
    try:
        return run(model, call) if run else call(model)
    except TraceTooLarge:
        raise
    except TypeError as exc:
        if (run is None or getattr(run, "plain", False)) and not _binds(model.forward, *call.args, **call.kwargs):
            raise WrongArguments(side, model, call, exc) from exc
        if run is not None and not _binds(getattr(run, "given", None) or run, model, call):
            raise
        raise ForwardFailed(side, exc, call) from exc
    except Exception as exc:
        raise ForwardFailed(side, exc, call) from exc


def _binds(function: Callable, /, *args: Any, **kwargs: Any) -> bool:
    """Whether the arguments fit ``function``'s signature (True when it cannot be read): where they
    do, a TypeError raised inside is the function's own."""
    try:
        inspect.signature(function).bind(*args, **kwargs)
    except TypeError:
        return False
    except ValueError:
        return True
    return True


class WrongArguments(TypeError):
    """A model's forward cannot take the inputs as given (its signature does not bind them). The
    message gives the fix in Python (``{side}_call``); :meth:`on_command_line` gives it for a
    command that passes one positional input per ``--input-shape``."""

    def __init__(self, side: str, model: nn.Module, call: Call, error: TypeError) -> None:
        self.side, self.model_name, self.error = side, type(model).__name__, one_line(error)
        try:
            self.parameters: list[inspect.Parameter] | None = list(inspect.signature(model.forward).parameters.values())
        except (TypeError, ValueError):
            self.parameters = None
        got = [f"{len(call.args)} positional" if call.args else "",
               "keywords " + ", ".join(call.kwargs) if call.kwargs else ""]
        given = " and ".join(g for g in got if g) or "no arguments"
        super().__init__(
            f"the {side} ({self.model_name}) cannot take the inputs as given ({given}): its {self._takes()} does not "
            f"accept them ({self.error}); pass {side}_call=lambda model, call: ... to call it your own way, e.g. "
            f"{side}_call=lambda model, call: model(*call.kwargs.values()) for keyword inputs it takes by position")

    def _takes(self) -> str:
        return "forward" if self.parameters is None else f"forward({', '.join(p.name for p in self.parameters)})"

    def on_command_line(self, shapes: Sequence[str], given: bool) -> str:
        """The error for a command that passed ``shapes`` (one positional input each; ``given``:
        whether the user gave them, or they are the command's default)."""
        counted = (f"{len(shapes)} --input-shape {'was' if len(shapes) == 1 else 'were'} given" if given else
                   f"no --input-shape was given (the default is one input, {' '.join(shapes)})")
        head = f"the {self.side} ({self.model_name})"
        if self.parameters is not None:
            positional = [p for p in self.parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            required = sum(p.default is p.empty for p in positional)
            most = None if any(p.kind is p.VAR_POSITIONAL for p in self.parameters) else len(positional)
            keywords = [p.name for p in self.parameters if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
            if not keywords and len(shapes) < required:
                return (f"{head} takes {_count(required, 'positional input')}, {self._takes()}, but {counted}: give "
                        f"one --input-shape per input, in the forward's order (repeat --input-shape)")
            if not keywords and most is not None and len(shapes) > most:
                return (f"{head} takes at most {_count(most, 'positional input')}, {self._takes()}, but {counted}: "
                        f"give one --input-shape per input, in the forward's order")
        return (f"{head} cannot take the inputs the command line gives ({counted}, each one positional input): its "
                f"{self._takes()} does not accept them ({self.error}); give a factory whose model's forward takes its "
                f"inputs by position")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


class RandomDraws:
    """Whether the code run inside drew from a global random generator: torch's (CPU, and the CUDA
    ones initialized before it started), Python's ``random`` or numpy's. A forward that does
    (Dropout in train mode, sampling, augmentation) gives other outputs on every run, so no second
    run of it measures rounding alone."""

    def __init__(self) -> None:
        self.drew = False

    def __enter__(self) -> "RandomDraws":
        self._before, self.drew = _generator_states(), False
        return self

    def __exit__(self, *exc: object) -> None:
        after = _generator_states()
        self.drew = any(_state_moved(a, b) for a, b in zip(self._before, after))


def _generator_states() -> list[Any]:
    states: list[Any] = [random.getstate(), torch.random.get_rng_state()]
    numpy = sys.modules.get("numpy")  # a forward using numpy imported it already
    states.append(numpy.random.get_state()[1].copy() if numpy is not None else None)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states += torch.cuda.get_rng_state_all()
    return states


def _state_moved(before: Any, after: Any) -> bool:
    if isinstance(before, torch.Tensor):
        return not torch.equal(before, after)
    if before is None or after is None:
        return False
    if hasattr(before, "shape"):  # numpy's key array
        return bool((before != after).any())
    return before != after


# -- non-finite outputs --------------------------------------------------------------------------
def nonfinite_notes(final: Sequence[tuple[str, torch.Tensor, torch.Tensor]], outputs: Mapping[str, Metrics],
                    allow_nonfinite: bool) -> list[str]:
    """One-sided NaN/Inf are a disagreement; agreeing ones prove nothing unless allowed."""
    notes, agreeing = [], []
    for key, a, b in final:
        count_a, count_b = (int((~torch.isfinite(t)).sum()) for t in (a, b))
        if outputs[key].nonfinite_mismatch:
            what = _label(key).removeprefix("the ")
            notes.append(f"final {what}: {outputs[key].nonfinite_mismatch} values are NaN/Inf on one side only "
                         f"(candidate has {count_a} non-finite values, reference {count_b}): the outputs disagree there")
        elif count_a or count_b:
            agreeing.append(key)
    if agreeing and not allow_nonfinite:
        notes.append(f"non-finite values (NaN/Inf) in final outputs {sorted(agreeing)}, at the same places on both "
                     f"sides: agreeing NaNs prove nothing (pass allow_nonfinite=True if they are expected)")
    return notes


# -- around compare() ----------------------------------------------------------------------------
class _FirstOutput:
    """A side's call function that keeps the output of its first call (the traced run)."""

    def __init__(self, run: Callable[[nn.Module, Call], Any] | None) -> None:
        self.given = run
        self.run = run or (lambda model, call: call(model))
        self.plain = run is None  # the model called on the inputs as given: run_forward checks they fit
        self.output: Any = None
        self.called = False

    # two wrappers of one call function run the model alike: caches keyed by how a model is run
    # (the reference's narrowing in noise.py) hold across the comparisons of one map's verification
    def __eq__(self, other: object) -> bool:
        return isinstance(other, _FirstOutput) and self.given is other.given

    def __hash__(self) -> int:
        return hash((_FirstOutput, id(self.given)))

    def __call__(self, model: nn.Module, call: Call) -> Any:
        out = self.run(model, call)
        if not self.called:
            self.output, self.called = out, True
        return out


def preserves_models(compare: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``compare(candidate, reference, inputs, **options)`` with the guards of this module."""
    signature = inspect.signature(compare)

    @functools.wraps(compare)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        options = bound.arguments
        given = {side: options[side] for side in ("candidate", "reference")}
        for side, model in given.items():
            options[side] = eager_module(model)
        candidate, reference = options["candidate"], options["reference"]
        if not isinstance(candidate, nn.Module):
            return compare(*args, **kwargs)  # compare's own checks name the wrong argument
        models = [m for m in (candidate, reference) if isinstance(m, nn.Module)]  # or a recorded trace
        if len(models) == 2:
            check_devices(candidate, reference)
        with torch.inference_mode(False):
            state = ModelState(*models)
            try:
                report = _run(compare, options, state)
            finally:
                state.restore()
        report.notes.extend(_changed_parameter_notes(state))
        for side, model in given.items():
            report.notes.extend(untraceable_notes(side, model, options[side]))
        return report

    return guarded


def _changed_parameter_notes(state: ModelState) -> list[str]:
    notes = []
    for index, names in sorted(state.changed_parameters().items()):
        shown = ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")
        notes.append(f"the {('candidate', 'reference')[index]} wrote into {len(names)} parameters in place during "
                     f"the comparison ({shown}); parameters are not copied, so a write that changed them cannot be "
                     f"undone: the model may now hold other weights than before")
    return notes


def _run(compare: Callable[..., Any], options: dict[str, Any], state: ModelState) -> Any:
    train_notes = train_mode_notes(*(options[side] for side in ("candidate", "reference")))
    silenced = silenced_notes(options["reference"])
    if options["inputs"] is None and not isinstance(options["reference"], nn.Module):
        options["inputs"] = options["reference"].call()  # a recorded trace brings the inputs of its run
    call = as_call(options["inputs"])
    if any(t.is_inference() for t in flatten_tensors((call.args, dict(call.kwargs))).values()):
        call = options["inputs"] = call.clone()  # made under inference_mode: ordinary copies from here on
    auto = options.get("mode") == "auto"
    notes: list[str] = []
    try:
        report, runs = _attempt(compare, options, "full" if auto else options.get("mode"))
    except TraceTooLarge as exc:
        if not auto:
            raise
        state.restore()
        report, runs = _attempt(compare, options, "summary")
        notes.append(f"switched to summary mode: {exc.estimate()}")
    if not report.passed:
        sides = [(side, options[side], runs[side].run, runs[side].output, options[f"{side}_outputs"])
                 for side in ("candidate", "reference") if runs[side].called]
        random = _rerun_differences(sides, call, state)
        notes = [_nondeterminism_note(side, how) for side, how in random.items()] + notes
        if random:
            _not_blamed_on_values(report, list(random))
    report.notes[:0] = notes
    report.notes.extend(train_notes + silenced)
    return report


def _attempt(compare: Callable[..., Any], options: dict[str, Any], mode: str) -> tuple[Any, dict[str, _FirstOutput]]:
    runs = {side: _FirstOutput(options[f"{side}_call"]) for side in ("candidate", "reference")}
    attempt = dict(options, mode=mode, candidate_call=runs["candidate"], reference_call=runs["reference"])
    return compare(**attempt), runs

