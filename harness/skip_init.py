"""Building a reference without the initialization that :func:`harness.randomize_` overwrites.

A pair's reference is built by its upstream constructor and then every parameter is re-drawn
from the pair's generator. Matrices and kernels are replaced whole (vectors keep their upstream
value plus noise), so the upstream initialization of every parameter of two or more dimensions is
thrown away. It is not cheap: timm's truncated normal is a uniform draw, an ``erfinv`` and three
more passes, on top of the ``kaiming_uniform_`` that ``nn.Linear`` and ``nn.Conv2d`` already ran,
and it was a seventh of the parity suite's time (14 of 97 s run serially).

Algorithm (:func:`build_without_overwritten_init`):

1. Run the constructor under :class:`_SkipOverwritten`, a torch-function mode that does not run an
   in-place initializer (``uniform_``, ``normal_``, ``erfinv_``, ``mul_``, ``clamp_``, ``copy_``,
   every ``torch.nn.init`` function ...) whose target is a floating ``nn.Parameter`` of two or more
   dimensions. Such a parameter is filled with NaN the first time, so that whatever reads it
   afterwards carries NaN. Everything else runs as written: vectors, buffers, plain tensors.
2. Re-draw the parameters (the pair's randomize function).
3. Check that no parameter, buffer or tensor attribute holds a NaN. One does when the constructor
   read a skipped matrix (a weight-norm gain, a buffer derived from a weight) or the re-draw left
   one alone; then the reference is built again with its full initialization, and the pair is
   remembered so as not to try again.

Skipping draws moves the global random stream: a vector the constructor draws at random (the
``uniform_`` bias of ``nn.Linear``) gets other values than a full initialization gives it, from
the same distribution. A build is still deterministic: the same pair gives bitwise the same
weights every time.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["build_without_overwritten_init"]

_T = torch.Tensor
# in-place methods an initializer writes a parameter with: random draws and the arithmetic after them
_IN_PLACE = frozenset({
    _T.uniform_, _T.normal_, _T.erfinv_, _T.clamp_, _T.clamp_min_, _T.clamp_max_, _T.mul_, _T.add_, _T.div_,
    _T.sub_, _T.fill_, _T.zero_, _T.copy_, _T.exponential_, _T.log_normal_, _T.cauchy_, _T.geometric_,
    _T.random_, _T.bernoulli_, _T.abs_, _T.sqrt_, _T.exp_, _T.log_, _T.neg_, _T.sign_,
})
_INITIALIZERS = frozenset(getattr(nn.init, name) for name in dir(nn.init)
                          if name.endswith("_") and not name.startswith("_") and callable(getattr(nn.init, name)))
# pairs whose constructor reads a skipped matrix, or whose re-draw leaves one: built in full
_NEEDS_FULL_INIT: set[str] = set()


class _SkipOverwritten(TorchFunctionMode):
    """Skip in-place initializers of floating parameters of two or more dimensions (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: dict[int, nn.Parameter] = {}  # by id: each filled with NaN once

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        if (func in _IN_PLACE or func in _INITIALIZERS) and _overwritten(target):
            if id(target) not in self.skipped:
                with torch.no_grad():
                    target.fill_(math.nan)
                self.skipped[id(target)] = target
            return target
        return func(*args, **kwargs)


def _overwritten(target: Any) -> bool:
    """Whether ``randomize_`` replaces ``target`` whole: a floating parameter of two or more dimensions."""
    return isinstance(target, nn.Parameter) and not isinstance(target, nn.parameter.UninitializedParameter) \
        and target.ndim >= 2 and target.is_floating_point()


def build_without_overwritten_init(key: str, construct: Callable[[], nn.Module],
                                   redraw: Callable[[nn.Module], None]) -> nn.Module:
    """``construct()`` then ``redraw(model)``, skipping the initialization the re-draw replaces.

    ``construct`` must seed the global generator itself (it is called again for a full build);
    ``key`` names the construction, to remember one that needs its full initialization.
    """
    if key not in _NEEDS_FULL_INIT:
        with _SkipOverwritten() as mode:
            model = construct()
        redraw(model)
        if not mode.skipped or not _holds_nan(model):
            return model
        _NEEDS_FULL_INIT.add(key)
    model = construct()
    redraw(model)
    return model


def _holds_nan(model: nn.Module) -> bool:
    """Whether a parameter, buffer or tensor attribute of ``model`` holds a NaN."""
    seen: set[int] = set()
    for module in model.modules():
        tensors = [*module._parameters.values(), *module._buffers.values(),
                   *(v for v in vars(module).values() if isinstance(v, torch.Tensor))]
        for t in tensors:
            if t is None or id(t) in seen or not (t.is_floating_point() or t.is_complex()) or not t.numel():
                continue
            seen.add(id(t))
            # a finite sum means no NaN (an overflow to inf falls back to the exact check)
            if not math.isfinite(abs(t.detach().sum().item())) and bool(torch.isnan(t.detach()).any()):
                return True
    return False
