"""CompareOptions: everything a comparison is told besides the two models and their inputs.

The options travel together: a :class:`harness.Pair` declares some of them (how each side is called,
which outputs are final, rename rules, tolerances), a run adds others (mode, module filters, a weight
map, the noise floor, backward, where traces spill), a recorded reference fills in what it stored, and
:func:`harness.compare` reads them all. They are one frozen value, checked once when it is made, so
that a malformed option fails before any model runs and every stage reads the same settings.
:func:`harness.compare`'s keyword arguments are exactly these fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

from harness.adapters import UserAdapter, check_adapters
from harness.align import check_rename
from harness.backward import check_backward
from harness.checks import check_choice, check_type, type_error
from harness.metrics import Tolerance, check_tolerances
from harness.noise import check_noise_floor
from harness.trace import spill_folder
from harness.weights import WeightMap

__all__ = ["CompareOptions", "PAIR_OPTIONS"]

Outputs = Callable[[Any], Mapping[str, Any]]

# The options a Pair declares (its keyword arguments of the same names); the others are chosen per run.
PAIR_OPTIONS = ("rename", "tolerances", "module_tolerances", "candidate_call", "reference_call",
                "candidate_outputs", "reference_outputs", "rerun", "allow_nonfinite")

MODES = ("full", "summary", "auto")


@dataclass(frozen=True, kw_only=True)
class CompareOptions:
    """How two models are compared (the keyword arguments of :func:`harness.compare`).

    Attributes:
        rename: ``(regex, replacement)`` rules mapping candidate module names to reference names.
        tolerances: per-dtype overrides, e.g. ``{"float32": Tolerance(atol=1e-4, rtol=1e-3)}``.
        module_tolerances: ``(regex on candidate name, dtype name or None, Tolerance)`` rules.
        candidate_call / reference_call: ``(model, Call) -> output`` for a side not called as
            ``model(*args, **kwargs)``.
        candidate_outputs / reference_outputs: ``output -> {name: tensor}``, the final outputs.
        rerun: regexes of candidate module names the culprit search may re-run on reference inputs
            (``None``: decided per module).
        allow_nonfinite: final outputs may hold NaN/Inf.
        include / exclude: regexes on module names (or ``{"candidate": ..., "reference": ...}``)
            selecting the traced modules.
        mode: ``"full"``, ``"summary"`` (statistics only) or ``"auto"`` (summary when full would not fit).
        weights: a :class:`harness.WeightMap` pairing modules through the tensors they own.
        adapters: ``(regex on candidate module name, fn)`` bringing outputs into the reference's layout.
        noise_floor: ``None`` (automatic), ``True``, ``False`` or a ratio threshold (:mod:`harness.noise`).
        backward / backward_loss: also compare gradients, from this loss (:mod:`harness.backward`).
        spill: a folder (``True``: the temp folder) where full-mode traces keep their large copies in
            files, read back as they are measured, instead of memory (:class:`harness.Tracer`);
            ``"auto"`` (the default): the temp folder, beyond each trace's first 256 MiB;
            ``None``/``False``: memory only.
        diagnose: explain a failing comparison's origins operation by operation (``report.diagnosis``);
            ``False`` leaves the diagnosis empty, for callers that need only the verdict and the
            culprit (the verification of a weight map runs one comparison per alternative).
    """

    rename: Sequence[tuple[str, str]] = ()
    tolerances: Mapping[str, Tolerance] | None = None
    module_tolerances: Sequence[tuple[str, str | None, Tolerance]] = ()
    candidate_call: Callable[[Any, Any], Any] | None = None
    reference_call: Callable[[Any, Any], Any] | None = None
    candidate_outputs: Outputs | None = None
    reference_outputs: Outputs | None = None
    rerun: Sequence[str] | None = None
    allow_nonfinite: bool = False
    include: str | Mapping[str, str] | None = None
    exclude: str | Mapping[str, str] | None = None
    mode: Literal["full", "summary", "auto"] = "full"
    weights: WeightMap | None = None
    adapters: Sequence[UserAdapter] = ()
    noise_floor: bool | float | None = None
    backward: bool = False
    backward_loss: Any = None
    spill: Any = "auto"
    diagnose: bool = True

    def __post_init__(self) -> None:
        check_rename(self.rename)
        check_tolerances(self.tolerances, self.module_tolerances)
        for name in ("candidate_call", "reference_call", "candidate_outputs", "reference_outputs"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise type_error(name, getattr(self, name), "a function or None")
        if self.rerun is not None:
            check_type("rerun", self.rerun, (list, tuple), what="a list of regexes on candidate module names or None")
        check_type("allow_nonfinite", self.allow_nonfinite, bool)
        check_choice("mode", self.mode, MODES)
        check_adapters(self.adapters)
        check_noise_floor(self.noise_floor)
        if self.weights is not None:
            check_type("weights", self.weights, WeightMap, what="a harness.WeightMap",
                       fix="make one with harness.map_weights(...) or harness.load_weight_map(path)")
        check_backward(self.backward, self.backward_loss)
        spill_folder(self.spill)
        check_type("diagnose", self.diagnose, bool)

    def replace(self, **changes: Any) -> "CompareOptions":
        """These options with some replaced (checked again); an unknown name is a TypeError."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise TypeError(f"unknown comparison option {unknown[0]!r}; the options are {', '.join(self.names())}")
        return dataclasses.replace(self, **changes)

    def to_kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of :func:`harness.compare`."""
        return {name: getattr(self, name) for name in self.names()}

    def declared(self) -> dict[str, Any]:
        """The options a :class:`harness.Pair` declares, as keyword arguments."""
        return {name: getattr(self, name) for name in PAIR_OPTIONS}

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))
