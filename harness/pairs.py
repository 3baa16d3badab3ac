"""Pairs: a candidate model, its reference, and everything needed to compare them.

A :class:`Pair` is declarative. Definitions live in the ``reference`` package (one module per
upstream family); the harness discovers them through the ``parity_harness.pairs`` entry-point
group, so this module imports nothing from ``candidates`` or ``reference``. A family declares
its pairs first (:mod:`harness.catalog`: name, tags, description, the module that defines it), so
listing needs no model library; :func:`get_pair` imports a declared pair's module on first use.

Determinism: ``pair.build()`` seeds its own generator, builds the reference, re-draws every
parameter from that generator (upstream inits such as a 1e-6 layer scale or zero biases would
hide whole branches from a parity check; the upstream initialization of the matrices this replaces
is skipped, :mod:`harness.skip_init`), converts the reference state dict with the pair's pure
``convert`` function and loads it strictly into the candidate. The same call gives bitwise the
same weights on both sides, every time.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from harness import catalog
from harness.checks import check_type, type_error
from harness.metrics import Tolerance
from harness.options import PAIR_OPTIONS, CompareOptions
from harness.skip_init import build_without_overwritten_init
from harness.trace import flatten_tensors, map_tensors

__all__ = ["Call", "Pair", "as_call", "as_pair", "register", "get_pair", "list_pairs", "randomize_",
           "reuse_references"]

StateDict = dict[str, torch.Tensor]
ENTRY_POINT_GROUP = catalog.ENTRY_POINT_GROUP


@dataclass(frozen=True)
class Call:
    """Positional and keyword arguments of one forward call."""

    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, model: nn.Module) -> Any:
        return model(*self.args, **self.kwargs)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "Call":
        """Cast floating tensors to ``dtype`` and move every tensor to ``device``."""

        def cast(x: torch.Tensor) -> torch.Tensor:
            return x.to(device=device, dtype=dtype if (dtype and x.is_floating_point()) else x.dtype)

        return Call(map_tensors(self.args, cast), map_tensors(dict(self.kwargs), cast))

    def clone(self) -> "Call":
        """A copy whose tensors are independent of this call's (containers copied, others shared)."""
        return Call(map_tensors(self.args, torch.Tensor.clone), map_tensors(dict(self.kwargs), torch.Tensor.clone))

    def mutated_in(self, other: "Call") -> list[str]:
        """Paths of tensor arguments whose values differ in ``other`` (a clone that was used)."""
        mine = flatten_tensors(self.args, "args") | flatten_tensors(dict(self.kwargs), "kwargs")
        theirs = flatten_tensors(other.args, "args") | flatten_tensors(dict(other.kwargs), "kwargs")
        return [k for k, t in mine.items() if k in theirs and not _same(t, theirs[k])]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(((a == b) | (a != a) & (b != b)).all())


def as_call(inputs: Any) -> Call:
    """A tensor, a tuple of positional args, a dict of kwargs, or a Call -> Call."""
    if isinstance(inputs, Call):
        return inputs
    if isinstance(inputs, torch.Tensor):
        return Call((inputs,))
    if isinstance(inputs, tuple):
        return Call(inputs)
    if isinstance(inputs, dict):
        return Call((), inputs)
    raise type_error("inputs", inputs, "a Tensor, a tuple of positional args, a dict of kwargs or a harness.Call")


def randomize_(model: nn.Module, generator: torch.Generator, *, scale: float = 0.2) -> None:
    """Re-draw every floating parameter of ``model`` in place from ``generator``.

    Matrices and kernels get N(0, 1/fan_in) so activations keep their scale through depth;
    vectors (biases, norm weights, layer scales, per-channel gains) get ``init + N(0, scale)``
    so that a norm weight stays near 1 and a 1e-6 layer scale becomes a live branch.
    Buffers are left alone: they are usually derived constants (RoPE periods, masks).
    """
    with torch.no_grad():
        for p in model.parameters():
            if not p.is_floating_point():
                continue
            if p.ndim >= 2 and p.is_contiguous():
                # drawn in place: the values torch.randn would give, without a second big tensor
                p.normal_(generator=generator).div_(math.sqrt(max(p[0].numel(), 1)))
                continue
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            if p.ndim >= 2:
                p.copy_(noise.div_(math.sqrt(max(p[0].numel(), 1))))
            else:
                p.add_(noise.mul_(scale))


@dataclass(frozen=True)
class Pair:
    """A candidate/reference pair and how to compare it.

    Attributes:
        name: registry name (``convnext_tiny``).
        candidate: builds our model (random init; weights are overwritten).
        reference: builds the upstream model, eval mode, eager attention.
        convert: pure function, reference state dict -> candidate state dict (loaded strictly).
        make_inputs: ``generator -> inputs`` (tensor, tuple, dict or Call), float32; floating
            tensors are cast to the requested dtype afterwards.
        rename, tolerances, module_tolerances, candidate_call, reference_call, candidate_outputs,
            reference_outputs, rerun, allow_nonfinite: the comparison options this pair declares
            (see :class:`harness.CompareOptions`), checked and gathered in ``options``. E.g. a
            transformers reference wants ``reference_call=lambda m, c: m(pixel_values=c.args[0])``;
            ``rerun`` names modules whose forward takes the same arguments as their reference twin.
        randomize: re-draw reference parameters before transfer (see :func:`randomize_`).
        randomize_fn: a pair-specific re-draw ``(reference, generator) -> None``.
        tags: free labels, e.g. ``{"nightly"}`` for full-size pairs kept out of the default suite.
    """

    name: str
    candidate: Callable[[], nn.Module]
    reference: Callable[[], nn.Module]
    convert: Callable[[StateDict], StateDict]
    make_inputs: Callable[[torch.Generator], Any]
    rename: Sequence[tuple[str, str]] = ()
    tolerances: Mapping[str, Tolerance] = field(default_factory=dict)
    module_tolerances: Sequence[tuple[str, str | None, Tolerance]] = ()
    candidate_call: Callable[[nn.Module, Call], Any] | None = None
    reference_call: Callable[[nn.Module, Call], Any] | None = None
    candidate_outputs: Callable[[Any], Mapping[str, torch.Tensor]] | None = None
    reference_outputs: Callable[[Any], Mapping[str, torch.Tensor]] | None = None
    rerun: Sequence[str] | None = None
    allow_nonfinite: bool = False
    randomize: bool = True
    randomize_fn: Callable[[nn.Module, torch.Generator], None] | None = None
    seed: int = 0
    tags: frozenset[str] = frozenset()
    description: str = ""
    # The comparison options above stay keyword arguments (the pair's public constructor); they are
    # checked and gathered here once, and compare_pair hands this one value on.
    options: CompareOptions = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        catalog.check_pair_name(self.name)
        object.__setattr__(self, "options", CompareOptions(**{n: getattr(self, n) for n in PAIR_OPTIONS}))

    def build_reference(
        self, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> nn.Module:
        """The reference alone, with exactly the weights :meth:`build` gives it."""
        dtype = _check_dtype(dtype)
        reference = _LAST_REFERENCE.rebuild(self, dtype=dtype, device=device)
        if reference is not None:
            return reference.eval()
        reference = self._reference()
        # float32 on the CPU, before the move below; taken only to be kept, since holding it keeps
        # the float32 weights alive while they are cast (2.6 + 1.3 GiB for ConvNeXt-XL in float64)
        drawn = reference.state_dict() if _LAST_REFERENCE.enabled else {}
        reference = reference.to(device=device, dtype=dtype).eval()
        _LAST_REFERENCE.keep(self, drawn, reference)
        return reference

    def build(
        self, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", share_weights: bool = False
    ) -> tuple[nn.Module, nn.Module]:
        """(candidate, reference) with identical weights, in eval mode, on ``device``/``dtype``.

        ``share_weights=True``: the candidate's parameters are the reference's memory wherever the
        conversion only renames, reshapes or slices (one copy of the weights instead of two, the
        difference between fitting and not for the largest variants). For a comparison that owns
        both models: a parameter changed in place on one side changes on both. Buffers are always
        the candidate's own (a train-mode forward updates running statistics in place).
        """
        reference = self.build_reference(dtype=dtype, device=device)
        state = reference.state_dict()  # detached, sharing the reference's memory
        if not share_weights:
            state = {k: v.clone() for k, v in state.items()}
        candidate = _load_candidate(self.candidate, self.convert(state), seed=self.seed)
        if share_weights:
            _own_buffers(candidate, reference)
        return candidate.to(device=device, dtype=dtype).eval(), reference

    def _reference(self) -> nn.Module:
        if not self.randomize:
            return self._construct_reference()
        redraw = lambda model: (self.randomize_fn or randomize_)(model, torch.Generator().manual_seed(self.seed))
        return build_without_overwritten_init(self.name, self._construct_reference, redraw)

    def _construct_reference(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # upstream constructors draw from the global RNG
            torch.manual_seed(self.seed)
            return self.reference()

    def inputs(self, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Call:
        """Seeded, deterministic inputs; floating tensors cast to ``dtype``."""
        generator = torch.Generator().manual_seed(self.seed + 1)
        return as_call(self.make_inputs(generator)).to(dtype=dtype, device=device)

    def compare_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`harness.compare` that this pair declares."""
        return self.options.declared()


def _load_candidate(factory: Callable[[], nn.Module], state: StateDict, *, seed: int) -> nn.Module:
    """``factory()`` with ``state`` loaded strictly.

    The candidate is first built on the meta device and the converted tensors are assigned to it:
    its own initialization would be overwritten anyway, and for the largest variants it costs more
    than everything else in a parity run. Anything a constructor computes that is not in the
    state dict (a non-persistent buffer) would stay on meta; then the model is built for real.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device("meta"):
            candidate = factory()
        candidate.load_state_dict(state, strict=True, assign=True)
        if _on_meta(candidate):
            candidate = factory()
            candidate.load_state_dict(state, strict=True)
    return candidate


def _memory(tensors: Iterable[torch.Tensor]) -> set[int]:
    """The addresses of the memory that ``tensors`` (the non-empty ones) live in."""
    return {t.untyped_storage().data_ptr() for t in tensors if t.numel()}


def _on_meta(model: nn.Module) -> bool:
    """Whether a constructor run on the meta device left ``model`` anything without values: a
    non-persistent buffer, or a tensor kept as a plain attribute (neither is in a state dict)."""
    return any(t.is_meta for t in (*model.parameters(), *model.buffers())) or any(
        isinstance(v, torch.Tensor) and v.is_meta for m in model.modules() for v in vars(m).values())


class _LastReference:
    """The last built reference's weights, re-drawn and in float32, when reuse is switched on.

    Building a big reference is mostly its upstream initialization and the re-draw that replaces
    it (for ConvNeXt-XL 11 of the 13 seconds a float64 parity run takes). A parity suite builds
    every pair at two dtypes in a row; the second build constructs the upstream model on the meta
    device and assigns it a cast copy of these weights, bitwise what a fresh build gives. Only the
    last pair is kept (its float32 weights stay resident: 1.3 GiB for ConvNeXt-XL), and a
    reference whose constructor leaves anything the state dict does not hold is built for real.
    """

    def __init__(self) -> None:
        self.enabled = False
        self._pair: Pair | None = None
        self._state: StateDict = {}

    def keep(self, pair: Pair, state: StateDict, reference: nn.Module) -> None:
        """Keep ``pair``'s re-drawn float32 ``state``, copied if ``reference`` (as built) still holds it."""
        if not self.enabled:
            return
        self.clear()  # the old weights go before the copy is made
        if not _rebuildable(reference, state):
            return
        held = _memory(state.values()) & _memory((*reference.parameters(), *reference.buffers()))
        self._pair, self._state = pair, {k: v.clone() for k, v in state.items()} if held else state

    def rebuild(self, pair: Pair, *, dtype: torch.dtype, device: torch.device | str) -> nn.Module | None:
        if not self.enabled or self._pair is not pair:
            return None
        state = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype, copy=True)
                 for k, v in self._state.items()}
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(pair.seed)
                with torch.device("meta"):
                    reference = pair.reference()
            reference.load_state_dict(state, strict=True, assign=True)
        except (RuntimeError, NotImplementedError):  # a constructor that reads tensor values
            return None
        return None if _on_meta(reference) else reference

    def clear(self) -> None:
        self._pair, self._state = None, {}


def _rebuildable(reference: nn.Module, state: StateDict) -> bool:
    """Whether ``state`` holds everything of ``reference`` that its constructor on the meta device
    would leave without values, and holds each tensor once (tied weights would come back untied)."""
    names = {n for n, _ in (*reference.named_parameters(), *reference.named_buffers())}
    attributes = any(isinstance(v, torch.Tensor) for m in reference.modules() for v in vars(m).values())
    tied = len(_memory(state.values())) < sum(1 for t in state.values() if t.numel())
    return names <= state.keys() and not attributes and not tied


_LAST_REFERENCE = _LastReference()


def reuse_references(enabled: bool = True) -> bool:
    """Keep the last built pair's reference weights to build that pair again without its upstream
    initialization (see :class:`_LastReference`); the parity plugin switches this on. ``False``
    switches it off and frees them. Returns the setting it replaced."""
    check_type("reuse_references(enabled)", enabled, bool)
    before, _LAST_REFERENCE.enabled = _LAST_REFERENCE.enabled, enabled
    if not enabled:
        _LAST_REFERENCE.clear()
    return before


def _own_buffers(candidate: nn.Module, reference: nn.Module) -> None:
    """Give ``candidate`` its own copy of every buffer that shares memory with ``reference``."""
    shared = _memory((*reference.parameters(), *reference.buffers()))
    for module in candidate.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.numel() and buffer.untyped_storage().data_ptr() in shared:
                module._buffers[name] = buffer.clone()


def _check_dtype(dtype: torch.dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise type_error("dtype", dtype, "a floating torch.dtype", fix="e.g. torch.float32 or torch.float64")
    return dtype


_REGISTRY: dict[str, Pair] = {}  # built pairs; declared ones (harness.catalog) join on first get_pair


def register(pair: Pair) -> Pair:
    """Add ``pair`` to the registry; names are unique."""
    check_type("register() argument", pair, Pair, what="a harness.Pair")
    if pair.name in _REGISTRY and _REGISTRY[pair.name] is not pair:
        raise ValueError(f"a pair named {pair.name!r} is already registered")
    _REGISTRY[pair.name] = pair
    return pair


def _load_definitions() -> None:
    catalog.load_entry_points()


def list_pairs(*, tag: str | None = None) -> list[str]:
    """Names of every registered pair (optionally only those carrying ``tag``), sorted.

    Declared pairs are listed from their declarations: nothing is built or imported for them.
    """
    _load_definitions()
    declared = catalog.lazy_pairs()
    names = set(_REGISTRY) | set(declared)
    if tag is None:
        return sorted(names)
    return sorted(n for n in names if tag in (_REGISTRY[n].tags if n in _REGISTRY else declared[n].tags))


def get_pair(name: str) -> Pair:
    """The registered pair called ``name`` (its definitions imported now if only declared so far);
    a ValueError names close matches otherwise."""
    _load_definitions()
    check_type("pair name", name, str, fix="python -m harness list shows the registered names")
    declared = catalog.lazy_pairs()
    if name not in _REGISTRY and name in declared:
        catalog.load(name)
        if name not in _REGISTRY:
            raise ValueError(f"pair {name!r} is declared with loader {declared[name].loader!r}, "
                             f"which did not register it: register(Pair(name={name!r}, ...)) there")
    try:
        return _REGISTRY[name]
    except KeyError:
        known = set(_REGISTRY) | set(declared)
        close = difflib.get_close_matches(name, sorted(known), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"no pair named {name!r}{hint} (python -m harness list shows all {len(known)})"
        ) from None


def as_pair(pair: "str | Pair") -> Pair:
    """A registered pair's name or a Pair -> the Pair."""
    return check_type("pair", get_pair(pair) if isinstance(pair, str) else pair, Pair,
                      what="a registered name or a harness.Pair")
