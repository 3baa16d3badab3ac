"""Layout adapters: twin modules that return the same values in another shape.

Independent implementations store one activation differently: ``(N, C)`` against
``(N, C, 1, 1)``, NCHW against NHWC, ``(B, H, W, C)`` against ``(B, H*W, C)``, a Swin window
attention's ``(B*nW, ws*ws, C)`` against the map ``(B, H, W, C)`` (cyclically shifted or not).
When twin outputs have the same number of elements but different shapes, the harness looks for an
adapter that brings the candidate's tensor into the reference's shape:

1. reshape alone (squeeze, unsqueeze, flatten, unflatten: row-major order kept);
2. a permutation of the candidate's dims, then a reshape (NCHW -> NHWC, ``(B, C, H*W)`` ->
   ``(B, H*W, C)``); only permutations keeping any two axes of one size in their order, or moving
   the channel axis to the end or back (a square map's H and W are never exchanged);
3. the same with the roles swapped: the reference permuted and reshaped into the candidate's
   shape, the inverse applied to the candidate;
4. window partition or reverse for window sizes that fit, with and without a cyclic shift of
   half a window, of a map ``(B, H, W, C)`` or of its tokens ``(B, H*W, C)`` (each grid the
   token and window counts allow);
5. a map ``(B, C, H, W)`` and its non-overlapping patches as tokens ``(B, L, C*p*p)``, each patch
   flattened channel first (``F.unfold``) or channel last (a patchify before a linear patch
   embedding), either way round (tried first: only shapes made for a patch grid fit it);
6. twins of one shape whose plain comparison fails: the permutations of 2. that keep the shape
   (NHWC against NCHW when C == H == W: a module may turn the reference's layout into its own
   inside), and, where the inputs agree only through such a layout, rolls of the token axes by a
   few tokens (a port keeping its class token at the end of the sequence); one that passes is
   taken. A module given the reference's layout that returns its tokens rolled, and a map whose
   H and W were exchanged (on a square grid they keep the shape), still fail.

Twins of other element counts, one of which computes one position along an axis of the other's
output (a norm on the pooled class token against one on every token), are compared at that
position (:func:`one_position`, either side the smaller).

An adapter given for a module (a user's, or the weight map's regroup of the output features of a
fused ``qkv`` laid out per head) is applied first, in the candidate's own layout; when its result
still has another shape than the twin's, the search above runs on it and the two compose
(:func:`then_layout`: features regrouped, then the windows folded into the batch unfolded).

Among the adapters whose shapes fit, the one giving the smallest error is kept, or the first
within the tolerance (or within float32's rounding where the tolerance is tighter, which a float64
reference computing its softmax in float32 leaves between right twins: :func:`rounding_tolerance`);
the verdict on the row is then made on the adapted tensor as on any other, and the adapter is shown
in the row. The layout two shapes last agreed in is tried first, and tensors that agree in no layout
(their extremes or sums differ beyond that bound) take it, or the first that fits, unmeasured. A
wrong layout is not hidden by this: the module's consumers receive the wrong layout and fail.
Summary-mode leaves (statistics only) need no adapter: mean, std and absmax do not depend on
layout, so equal element counts suffice.

Whether two tensors agree in any layout (:func:`agreeing_layout`): tensors of one shape are
measured as they are; tensors of another shape through the adapter found, and so are tensors of one
shape that disagree as they are when the caller asks for the shape-keeping permutations (6.).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain, islice, permutations
from typing import Any, Callable, Iterator, Sequence

import torch

from harness.checks import type_error
from harness.metrics import DEFAULT_TOLERANCES, Tolerance, measure
from harness.weightmap import shape_permutations

__all__ = ["AS_IS", "Adapter", "agreeing_layout", "at_one_position", "at_position", "find_adapter",
           "kept_permutation", "kept_rolled_layout", "one_position", "rounding_tolerance", "then_layout",
           "unit_axes_dropped", "UserAdapter", "check_adapters"]


@dataclass(frozen=True)
class Adapter:
    """A function bringing a candidate tensor into the reference's layout, and its description."""

    description: str
    apply: Callable[[torch.Tensor], torch.Tensor]
    rolls: bool = False  # moves values cyclically (a shifted window partition, a token roll)


AS_IS = Adapter("as is", lambda t: t)  # what agreeing_layout answers for tensors that agree unadapted

UserAdapter = tuple[str, Callable[[torch.Tensor], torch.Tensor]]  # (regex on candidate module name, fn)


def check_adapters(adapters: Sequence[UserAdapter]) -> None:
    if isinstance(adapters, (str, bytes)) or not isinstance(adapters, Sequence):
        raise type_error("adapters", adapters, "a sequence of (regex, function) pairs")
    for rule in adapters:
        if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str) and callable(rule[1])):
            raise type_error("an adapter", rule, "a (regex on candidate module name, function tensor -> tensor) pair")
        try:
            re.compile(rule[0])
        except re.error as exc:
            raise ValueError(f"adapter rule {rule[0]!r} is not a valid regex: {exc}") from None


def user_adapter(module: str, adapters: Sequence[UserAdapter]) -> Adapter | None:
    for pattern, fn in adapters:
        if re.search(pattern, module):
            return Adapter(getattr(fn, "description", None) or f"user adapter for /{pattern}/", fn)
    return None


def then_layout(first: Adapter, candidate: torch.Tensor, reference: torch.Tensor,
                tol: Tolerance | None = None) -> Adapter | None:
    """``first`` followed by the layout (:func:`find_adapter`) bringing its result into
    ``reference``'s shape: ``first`` alone when it gives that shape or no layout does (the shapes
    then stay different: a visible mismatch); None when ``first`` does not apply to ``candidate``.

    Adapters compose: a fused ``qkv`` whose rows the weight map regroups per head, run on windows
    folded into the batch ``(B*nW, ws*ws, 3C)`` against a twin keeping the windows as dims, holds
    its twin's values only through the regroup of its features and then the window fold. The
    regroup works on the candidate's own last dim, so it goes first."""
    try:
        out = first.apply(candidate.detach())
    except Exception:  # a user adapter that does not fit this call
        return None
    if tuple(out.shape) == tuple(reference.shape):
        return first
    then = find_adapter(out, reference, tol=tol)
    if then is None:
        return first
    return Adapter(f"{first.description}, then {then.description}", lambda t: then.apply(first.apply(t)),
                   first.rolls or then.rolls)


def _groupable(shape: Sequence[int], target: Sequence[int]) -> bool:
    """A row-major reshape of ``shape`` into ``target`` that only merges or splits neighbours."""
    a = [d for d in shape if d != 1]
    b = [d for d in target if d != 1]
    i = j = 0
    while i < len(a) and j < len(b):
        pa, pb = a[i], b[j]
        while pa != pb:
            if pa < pb:
                i += 1
                if i >= len(a):
                    return False
                pa *= a[i]
            else:
                j += 1
                if j >= len(b):
                    return False
                pb *= b[j]
        i += 1
        j += 1
    return i == len(a) and j == len(b)


def _perm_text(dims: Sequence[int]) -> str:
    return "permute(" + ",".join(map(str, dims)) + ")"


def _candidates(cand_shape: tuple[int, ...], ref_shape: tuple[int, ...]) -> Iterator[Adapter]:
    # a patch grid fits only shapes made for it (features C*p*p, tokens H*W/p^2): tried first, it
    # is among the few layouts tried when values upstream are off and cannot tell layouts apart
    yield from _patch_adapters(cand_shape, ref_shape)
    if _groupable(cand_shape, ref_shape):
        yield Adapter(f"reshape{ref_shape}", lambda t: t.reshape(ref_shape))
    nd = len(cand_shape)
    if nd <= 6:
        for dims in permutations(range(nd)):
            if list(dims) == sorted(dims) or not _convention(cand_shape, dims):
                continue
            shape = tuple(cand_shape[d] for d in dims)
            if shape == ref_shape:
                yield Adapter(_perm_text(dims), lambda t, dims=dims: t.permute(*dims))
            elif _groupable(shape, ref_shape):
                yield Adapter(f"{_perm_text(dims)} + reshape{ref_shape}",
                              lambda t, dims=dims: t.permute(*dims).reshape(ref_shape))
    nr = len(ref_shape)
    if nr <= 6:
        for dims in permutations(range(nr)):
            if list(dims) == sorted(dims) or not _convention(ref_shape, dims):
                continue
            shape = tuple(ref_shape[d] for d in dims)
            if shape == cand_shape:
                continue  # the same as a candidate permutation, found above
            if _groupable(shape, cand_shape):
                inverse = [dims.index(i) for i in range(nr)]
                yield Adapter(f"reshape{shape} + {_perm_text(inverse)}",
                              lambda t, shape=shape, inverse=inverse: t.reshape(shape).permute(*inverse))
    yield from _window_adapters(cand_shape, ref_shape)


def _patch_adapters(cand: tuple[int, ...], ref: tuple[int, ...]) -> Iterator[Adapter]:
    """A map ``(B, C, H, W)`` against its non-overlapping ``p x p`` patches as tokens ``(B, L, F)``,
    each patch flattened channel first (``F.unfold``'s ``(C, p, p)``) or channel last (``(p, p, C)``,
    a patchify written for a linear patch embedding); both directions."""
    for map_shape, patch_shape, to_patches in ((cand, ref, True), (ref, cand, False)):
        if len(map_shape) != 4 or len(patch_shape) != 3 or map_shape[0] != patch_shape[0]:
            continue
        b, c, h, w = map_shape
        p = math.isqrt(patch_shape[2] // c) if patch_shape[2] % c == 0 else 0
        if p < 2 or c * p * p != patch_shape[2] or h % p or w % p or patch_shape[1] != (h // p) * (w // p):
            continue
        for order, dims in (("(C, p, p)", (0, 2, 4, 1, 3, 5)), ("(p, p, C)", (0, 2, 4, 3, 5, 1))):
            grid = (b, c, h // p, p, w // p, p)
            if to_patches:
                yield Adapter(f"{p}x{p} patches of the map, each as {order}",
                              lambda t, grid=grid, dims=dims, out=patch_shape: t.reshape(grid).permute(*dims).reshape(out))
            else:
                inverse = [dims.index(i) for i in range(6)]
                split = tuple(grid[d] for d in dims)
                yield Adapter(f"the map of {p}x{p} patches, each as {order}",
                              lambda t, split=split, inverse=inverse, out=map_shape: t.reshape(split).permute(*inverse).reshape(out))


def _partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B*nW, ws*ws, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _reverse(x: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """(B*nW, ws*ws, C) (or (B*nW, ws, ws, C)) -> (B, H, W, C)."""
    c = x.shape[-1]
    b = x.numel() // (h * w * c)
    x = x.reshape(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def _window_adapters(cand: tuple[int, ...], ref: tuple[int, ...]) -> Iterator[Adapter]:
    """Window partition/reverse (optionally with a cyclic shift) between a map and its windows; the
    map as ``(B, H, W, C)`` or as its tokens ``(B, H*W, C)`` (every grid the token count and the
    window count allow)."""
    for map_shape, win_shape, to_windows in ((cand, ref, True), (ref, cand, False)):
        if len(map_shape) not in (3, 4) or len(win_shape) not in (3, 4) or win_shape[-1] != map_shape[-1]:
            continue
        n = win_shape[1] * (win_shape[2] if len(win_shape) == 4 else 1)
        ws = math.isqrt(n)
        if ws * ws != n:
            continue
        for b, h, w, c in _grids(map_shape, ws, win_shape[0]):
            tokens = len(map_shape) == 3
            grid = f" of a {h}x{w} map" if tokens else ""
            for shift in sorted({0, ws // 2, -(ws // 2)}, key=abs):
                if to_windows:  # candidate is the map, reference the windows
                    label = f"window partition {ws}x{ws}{grid}" + (f" after roll {shift}" if shift else "")
                    yield Adapter(label, lambda t, ws=ws, s=shift, out=win_shape, m=(b, h, w, c):
                                  _partition(torch.roll(t.reshape(m), (s, s), (1, 2)), ws).reshape(out), bool(shift))
                else:  # candidate is the windows, reference the map
                    label = f"window reverse {ws}x{ws}{grid}" + (f" then roll {shift}" if shift else "")
                    yield Adapter(label, lambda t, ws=ws, s=shift, h=h, w=w, out=map_shape:
                                  torch.roll(_reverse(t, ws, h, w), (s, s), (1, 2)).reshape(out), bool(shift))


def _grids(map_shape: tuple[int, ...], ws: int, windows: int) -> Iterator[tuple[int, int, int, int]]:
    """``(B, H, W, C)`` grids of ``map_shape`` that ``windows`` windows of ``ws x ws`` tile."""
    if len(map_shape) == 4:
        b, h, w, c = map_shape
        if h % ws == 0 and w % ws == 0 and windows == b * (h // ws) * (w // ws):
            yield b, h, w, c
        return
    b, tokens, c = map_shape
    for h in range(ws, tokens + 1, ws):
        if tokens % h == 0 and (tokens // h) % ws == 0 and windows == b * (h // ws) * (tokens // h // ws):
            yield b, h, tokens // h, c


def _shape_keeping(shape: tuple[int, ...]) -> Iterator[Adapter]:
    """Permutations that leave ``shape`` as it is and are a layout convention (:func:`_convention`:
    NHWC against NCHW when C == H == W), then token orders (:func:`_token_rolls`)."""
    yield from _kept_permutations(shape)
    yield from _token_rolls(shape)


def _kept_permutations(shape: tuple[int, ...]) -> Iterator[Adapter]:
    """The permutations of :func:`_shape_keeping` (none for a shape whose axes all differ in size)."""
    for dims in _convention_dims(shape):
        yield Adapter(_perm_text(dims), lambda t, dims=dims: t.permute(*dims))


@lru_cache(maxsize=1024)
def _convention_dims(shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    # lexicographic, not the kernel layouts first: of adapters with equal errors the first is kept
    return tuple(dims for dims in sorted(shape_permutations(shape, shape)) if _convention(shape, dims))


def kept_permutation(candidate: torch.Tensor, reference: torch.Tensor, tol: Tolerance) -> Adapter | None:
    """The permutation keeping the shape of two tensors of one shape (a layout convention: NHWC
    against NCHW when C == H == W) through which ``candidate`` holds ``reference``'s values within
    ``tol``, None when none does (no roll of the tokens: :func:`agreeing_layout` with
    ``same_shape`` tries those too). Of several that hold, the one closest to ``reference``: values
    far smaller than ``tol``'s atol (a randomly initialized port's features of 1e-7) agree in every
    layout, and only their errors tell the right one. A shape whose axes all differ in size, or
    extremes that differ, answer at once."""
    shape = tuple(candidate.shape)
    if shape != tuple(reference.shape) or not _convention_dims(shape) or not _same_extremes(candidate, reference, tol):
        return None
    measured = [(measure(adapter.apply(candidate.detach()), reference), adapter) for adapter in _kept_permutations(shape)]
    held = [(m.max_abs, i, adapter) for i, (m, adapter) in enumerate(measured) if m.passes(tol)]
    return min(held, key=lambda h: h[:2])[2] if held else None


# the most tokens a sequence keeps apart from its patches: a class token, a distillation token, registers
_PREFIX_TOKENS = 8


def _token_rolls(shape: tuple[int, ...]) -> Iterator[Adapter]:
    """A token sequence whose prefix tokens (a class token, registers) one side keeps at the end:
    every non-batch axis of one size (the tokens; both axes of attention scores) rolled by up to
    ``_PREFIX_TOKENS``, the fewest first."""
    sizes = sorted({n for n in shape[1:] if n > 2})
    for k in range(1, _PREFIX_TOKENS + 1):
        for n in sizes:
            if k >= n:
                continue
            axes = tuple(d for d in range(1, len(shape)) if shape[d] == n)
            for by in (k, -k):
                yield Adapter(f"roll {by} along dim{'s' if len(axes) > 1 else ''} {', '.join(map(str, axes))}",
                              lambda t, by=by, axes=axes: torch.roll(t, (by,) * len(axes), axes), True)


def _convention(shape: Sequence[int], dims: Sequence[int]) -> bool:
    """Whether permuting ``shape`` by ``dims`` is a layout convention: it keeps every two axes of
    one size in their order, or it only moves the axis after the batch to the end or back (the
    channels; a matrix: its transpose).

    Conventions differ by where the channels go and how heads and tokens are grouped; none
    exchanges two other axes of one size. Such a permutation (H and W of a square map) would make
    a transposed map, a real error, agree with the reference."""
    n, dims = len(dims), tuple(dims)
    if n == 2 or dims in ((0, *range(2, n), 1), (0, n - 1, *range(1, n - 1))):
        return True
    place = {axis: i for i, axis in enumerate(dims)}
    return all(shape[a] != shape[b] or place[a] < place[b] for a in range(n) for b in range(a + 1, n))


def find_adapter(candidate: torch.Tensor, reference: torch.Tensor, *, same_shape: bool = False,
                 tol: Tolerance | None = None, remember: bool = True) -> Adapter | None:
    """The adapter (see module docstring) giving the smallest error, or None if no layout fits.
    Tensors of one shape need none, unless ``same_shape``: then the permutations that keep the
    shape are tried (a caller does so when the plain comparison fails).

    The layout in which tensors of these two shapes last agreed is tried first (the twins of one
    model pair keep their layouts from call to call and run to run). With ``tol`` (widened to
    :func:`rounding_tolerance`), the first layout agreeing within it is taken at once, and tensors
    that cannot agree in any layout (their extremes or sums differ beyond it: downstream of an
    error) take the remembered layout, or the first that fits, unmeasured: no layout would pass,
    and trying hundreds (the permutations of a 6-dim window partition) would only rank their errors.
    ``remember=False``: a layout found is not remembered (a caller that only words a difference)."""
    cs, rs = tuple(candidate.shape), tuple(reference.shape)
    if (cs == rs and not same_shape) or candidate.numel() != reference.numel() or candidate.numel() == 0:
        return None
    key = (cs, rs, same_shape)
    fitting = _fitting(_tried(cs, rs, same_shape), candidate, rs)
    wide = None if tol is None else rounding_tolerance(tol)
    if wide is not None and not _same_extremes(candidate, reference, wide):
        return next((adapter for adapter, _ in fitting), None)
    ref = reference.detach().double()
    enough = 0.0 if wide is None else wide.bound(float(ref.abs().max()))
    best: tuple[float, Adapter] | None = None
    for adapter, out in fitting:
        err = float((out.double() - ref).abs().nan_to_num(nan=math.inf).max())
        if best is None or err < best[0]:
            best = (err, adapter)
            if err <= enough:
                if remember:
                    _remember(key, adapter)
                break
    return None if best is None else best[1]


def in_layout_of(theirs: torch.Tensor, mine: torch.Tensor) -> torch.Tensor | None:
    """``theirs`` brought into the layout of ``mine`` by the adapter bringing it closest (of one
    shape: the permutation keeping it, NHWC against NCHW when C == H == W), laid out in memory as
    ``mine`` (a re-run's kernels see the strides the candidate's own input had); None where no
    layout fits. Nothing is remembered: callers only choose a re-run input or word a difference."""
    adapter = find_adapter(theirs, mine, same_shape=theirs.shape == mine.shape, remember=False)
    return None if adapter is None else torch.empty_like(mine, dtype=theirs.dtype).copy_(adapter.apply(theirs))


def rounding_tolerance(tol: Tolerance) -> Tolerance:
    """``tol``, or float32's where ``tol`` is tighter: within it values tell layouts apart. A
    float64 reference may compute some operations in float32 (transformers' softmax), so twins in
    the right layout may differ by that rounding and still stand far apart from every other layout."""
    wide = DEFAULT_TOLERANCES["float32"]
    return Tolerance(max(tol.atol, wide.atol), max(tol.rtol, wide.rtol))


# (candidate shape, reference shape, same_shape) -> the adapter they last agreed through (exactly, or
# within the rounding_tolerance of the caller's tolerance)
_AGREED: dict[tuple, Adapter] = {}
_AGREED_MOST = 4096


def _remember(key: tuple, adapter: Adapter) -> None:
    if len(_AGREED) >= _AGREED_MOST:
        _AGREED.clear()
    _AGREED[key] = adapter


def layouts(tensor: torch.Tensor, shape: tuple[int, ...], limit: int) -> list[Adapter]:
    """Up to ``limit`` layouts bringing ``tensor`` to ``shape``, unmeasured: for a caller that judges
    each by what it leads to, where no other tensor tells them apart (the values are off upstream)."""
    return [adapter for adapter, _ in islice(_fitting(_candidates(tuple(tensor.shape), tuple(shape)), tensor, tuple(shape)), limit)]


def _fitting(adapters: Iterator[Adapter], candidate: torch.Tensor, shape: tuple[int, ...]) -> Iterator[tuple[Adapter, torch.Tensor]]:
    """Each adapter once (by description) with ``candidate`` through it, where that gives ``shape``."""
    seen: set[str] = set()
    for adapter in adapters:
        if adapter.description in seen:
            continue
        seen.add(adapter.description)
        try:
            out = adapter.apply(candidate.detach())
        except RuntimeError:
            continue
        if tuple(out.shape) == shape:
            yield adapter, out


def agreeing_layout(candidate: torch.Tensor, reference: torch.Tensor, tol: Tolerance, *,
                    same_shape: bool = False, first: bool = False) -> Adapter | None:
    """The layout in which ``candidate`` holds ``reference``'s values within ``tol``: :data:`AS_IS`
    when it does as it is, the adapter of :func:`find_adapter` when only through that, None when in
    no layout. ``same_shape``: tensors of one shape that disagree as they are also try the
    permutations that keep the shape. ``first``: the first layout that holds them, not the best (a
    yes-or-no question; the one they last agreed in exactly is tried first). Tensors whose extremes
    or sums differ beyond ``tol`` agree in no layout, which is told at once."""
    if candidate.numel() != reference.numel():
        return None
    if candidate.shape == reference.shape:
        if measure(candidate, reference).passes(tol):
            return AS_IS
        if not same_shape:
            return None
    if not _same_extremes(candidate, reference, tol):
        return None
    if first:
        return _first_agreeing(candidate, reference, tol, same_shape)
    adapter = find_adapter(candidate, reference, same_shape=same_shape, tol=tol)
    if adapter is None or not measure(adapter.apply(candidate), reference).passes(tol):
        return None
    return adapter


def _first_agreeing(candidate: torch.Tensor, reference: torch.Tensor, tol: Tolerance,
                    same_shape: bool) -> Adapter | None:
    cs, rs = tuple(candidate.shape), tuple(reference.shape)
    return next((adapter for adapter, out in _fitting(_tried(cs, rs, same_shape), candidate, rs)
                 if measure(out, reference).passes(tol)), None)


def _tried(cs: tuple[int, ...], rs: tuple[int, ...], same_shape: bool) -> Iterator[Adapter]:
    """The layouts tried from shape ``cs`` to ``rs``, the one they last agreed in first."""
    adapters = _shape_keeping(cs) if cs == rs else _candidates(cs, rs)
    key = (cs, rs, same_shape)
    return chain([_AGREED[key]], adapters) if key in _AGREED else adapters


def kept_rolled_layout(match: Any, tol: Tolerance) -> Adapter | None:
    """The layout relating two twin calls' first inputs (``match.candidate``/``match.reference``
    records), when it moves values cyclically (a shifted window partition) and each twin returns a
    tensor of its own input's shape, in another shape than the other's: such twins keep their
    input's layout, so their outputs are compared in it (an attention that forgets to roll its
    shifted windows back agrees only through another roll). None otherwise."""
    c_in, r_in = match.candidate.first_input, match.reference.first_input
    c_out, r_out = match.candidate.primary, match.reference.primary
    if not all(isinstance(t, torch.Tensor) for t in (c_in, r_in, c_out, r_out)) or c_in.shape != c_out.shape \
            or r_in.shape != r_out.shape or c_in.shape == r_in.shape or c_in.numel() != r_in.numel():
        return None
    found = agreeing_layout(c_in, r_in, tol)
    return found if found is not None and found is not AS_IS and found.rolls else None


_POSITIONS = 8  # the first (and last) positions along an axis tried for a call computing one of them


def one_position(small: torch.Tensor, big: torch.Tensor, tol: Tolerance | None = None) -> tuple[int, int] | None:
    """``(dim, index)``: the position along one axis of ``big`` that ``small`` holds, when ``small``
    has ``big``'s shape without that axis (or with it of size 1; axes of size 1 aside): a norm run
    on the pooled class token against one run on every token, the class token taken after it. Either side may be the
    small one. The positions tried are the first and last few (class, distillation, register
    tokens); the one agreeing best is kept, the first within ``tol`` at once. None when no axis fits."""
    best: tuple[float, int, int] | None = None
    for dim, n in enumerate(big.shape):
        rest = (*big.shape[:dim], *big.shape[dim + 1:])
        # axes of size 1 aside: a head's norm on the pooled map keeps (B, C, 1, 1) where a port's
        # keeps (B, C)
        if n < 2 or unit_axes_dropped(small.shape) != unit_axes_dropped(rest):
            continue
        for index in dict.fromkeys((*range(min(n, _POSITIONS)), *range(max(n - _POSITIONS, 0), n))):
            part = big.select(dim, index).reshape(small.shape)
            err = measure(small, part).max_abs
            if best is None or err < best[0] or best[0] != best[0]:
                best = (err, dim, index)
            if tol is not None and err <= tol.bound(float(part.abs().max())):
                return dim, index
    return None if best is None else best[1:]


def unit_axes_dropped(shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` without its axes of size 1 (``(B, C, 1, 1)`` and ``(B, C)`` alike)."""
    return tuple(n for n in shape if n != 1)


def at_one_position(a: torch.Tensor, b: torch.Tensor, tol: Tolerance | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int] | None]:
    """``(a, b)`` with the one of more elements taken at the position :func:`one_position` finds
    the other holding, in the other's shape, and that ``(dim, index)``; ``(a, b, None)`` when no
    axis fits."""
    small, big = (a, b) if a.numel() < b.numel() else (b, a)
    found = one_position(small, big, tol)
    if found is None:
        return a, b, None
    part = at_position(big, small.shape, *found)
    return (a, part, found) if small is a else (part, b, found)


def at_position(big: torch.Tensor, shape: Sequence[int], dim: int, index: int) -> torch.Tensor:
    """``big`` at ``index`` along ``dim``, in ``shape`` (the shape of the side computing that position only)."""
    return big.select(dim, index).reshape(tuple(shape))


def _same_extremes(candidate: torch.Tensor, reference: torch.Tensor, tol: Tolerance) -> bool:
    """Whether a rearrangement of ``candidate``'s elements could agree with ``reference`` within
    ``tol``: one that does keeps the smallest and the largest element and the sum within the bound
    (per element, n times it for the sum). Two cheap passes rule out every permutation of a tensor
    downstream of an error at once."""
    if candidate.numel() != reference.numel() or not (candidate.is_floating_point() and reference.is_floating_point()):
        return True
    a, b = candidate.detach().double(), reference.detach().double()
    (a_low, a_high), (b_low, b_high) = torch.aminmax(a), torch.aminmax(b)
    bound = tol.bound(float(max(-b_low, b_high)))
    return bool(abs(a_low - b_low) <= bound and abs(a_high - b_high) <= bound
                and abs(float(a.sum() - b.sum())) <= bound * a.numel())
