"""The work a forward does, counted rather than timed: kernels, arithmetic and memory allocated.

A timed ratio of two forwards that run the same kernels on the same shapes is 1.0 plus the
machine's noise, which on shared cores is a few percent either way. Counting what each side asks of
the machine separates "costs more" from "measured higher this time": if the candidate runs no more
kernels, no more floating-point operations and allocates no more bytes than the reference, a timed
ratio above 1.0 is noise, not cost.

Algorithm: one forward runs under a ``TorchDispatchMode`` that sees every ATen call after autograd
and before the kernel. Views (``OpOverload.is_view``) move no data and are skipped. Every other call
counts

* the bytes of each output whose storage is none of the inputs' (a fresh allocation; an in-place
  call writes into its input and allocates nothing);
* one kernel if it allocated or wrote one of its inputs; calls that only re-describe their input
  (``_unsafe_view``, reading a scalar) move no data either;
* the floating-point operations of the call where ``torch.utils.flop_counter`` has a formula for
  it (matrix products, convolutions, attention): the arithmetic that dominates a vision model.

The counts are exact and repeatable, so unlike times they can be compared with ``<=``. The forward
runs under ``torch.no_grad()``, which runs the same kernels as inference mode; under inference mode
the dispatch mode would see ``linear`` and ``conv2d`` whole, before they become the ``addmm`` and
``convolution`` calls the operation formulas know.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry


@dataclass
class Work:
    """What one forward asked of the machine."""

    kernels: int = 0
    flops: int = 0
    allocated_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.work = Work()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view:
            return out
        allocated = _allocated_bytes(out, (args, kwargs))
        self.work.allocated_bytes += allocated
        if allocated or _writes_an_input(func):
            self.work.kernels += 1
        formula = flop_registry.get(func.overloadpacket)
        if formula is not None:
            self.work.flops += int(formula(*args, **kwargs, out_val=out))
        return out


def _allocated_bytes(out: Any, inputs: Any) -> int:
    seen = {_storage(t) for t in tree_leaves(inputs) if isinstance(t, torch.Tensor)}
    total = 0
    for tensor in tree_leaves(out):
        if isinstance(tensor, torch.Tensor) and _storage(tensor) not in seen:
            seen.add(_storage(tensor))  # a call returning one buffer twice allocated it once
            total += tensor.untyped_storage().nbytes()
    return total


def _writes_an_input(func: torch._ops.OpOverload) -> bool:
    return any(a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments)


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def count_work(forward: Callable[[], Any]) -> Work:
    """The :class:`Work` of one call of ``forward``, a function that runs the model and sets no
    grad mode of its own."""
    counter = _Counter()
    with torch.no_grad(), counter:
        forward()
    return counter.work
