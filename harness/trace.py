"""Hook-based tracing: every module call of a model, in execution order, with inputs and outputs.

``Tracer`` is a context manager. Entering it registers a forward pre-hook and a forward hook on
every submodule (and the root) whose qualified name passes the filter; leaving it removes them,
also when the forward raised. Each call of a hooked module becomes a :class:`Record`:

- ``name``: the qualified module name (the root is ``"<root>"``), ``call``: how many times this
  module ran before in the trace (a module run once per frame gives ``#0``, ``#1``, ...),
- ``start`` / ``end``: positions of the call's entry and exit in the trace, so that nesting is
  known exactly (``a`` contains ``b`` iff ``a.start < b.start and b.end < a.end``),
- ``inputs`` / ``outputs``: tensor leaves by path (``args.0``, ``kwargs.mask``, ``logits``,
  ``0.1``...). Tuples, lists, dicts and transformers ``ModelOutput`` are flattened.
- ``passthrough``: the call returned its input tensor object itself (``Identity``, ``Dropout`` in
  eval mode): it computes nothing, so alignment lists it apart when it has no twin.

Storage modes: ``"full"`` keeps detached copies (needed for error metrics and for re-running a
module on the other model's inputs), ``"summary"`` keeps only :class:`TensorSummary` (shape,
dtype and statistics) so that big models can be traced in little memory.

Spilling (``spill=FOLDER``, full mode): the copies of large CPU tensors go to files in FOLDER,
mapped into memory, and :meth:`Tracer.release` hands their pages back to the kernel. They stay
readable (from the page cache or the disk) but count against the process's memory only while
being read, so a full trace no longer needs to fit in memory next to the models: a comparison
reads each copy back when it measures it (:func:`harness.compare` ``spill``). ``spill="auto"``
(what a comparison does by default) keeps the first ``AUTO_IN_MEMORY`` bytes of large
copies in memory and spills the rest to the temp folder, unless that folder is itself in memory
(tmpfs) or the platform cannot hand pages back; a folder that refuses a file (full disk) then
leaves the copies in memory instead of failing the trace, and :attr:`Tracer.spill_declined` says why.
"""

from __future__ import annotations

import cmath
import ctypes
import dataclasses
import functools
import math
import mmap
import os
import re
import sys
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import torch
from torch import nn

from harness.checks import check_choice, check_module, type_error

__all__ = ["Record", "TensorSummary", "Tracer", "flatten_tensors", "has_nonfinite", "hookable_modules", "map_tensors",
           "name_filter", "output_leaves", "outputs_read_after", "eager_module", "untraceable_notes",
           "is_auto_spill", "spill_folder", "AUTO", "ROOT"]

ROOT = "<root>"
Mode = Literal["full", "summary"]


@dataclass(frozen=True)
class TensorSummary:
    """Shape, dtype and statistics of a tensor that was not kept."""

    shape: tuple[int, ...]
    dtype: str
    mean: float
    std: float
    absmax: float
    nonfinite: int

    @classmethod
    def of(cls, t: torch.Tensor) -> "TensorSummary":
        x = t.detach() if t.requires_grad else t
        shape, dtype = tuple(x.shape), _DTYPE_NAMES.get(x.dtype) or str(x.dtype).removeprefix("torch.")
        if x.numel() == 0:
            return cls(shape, dtype, 0.0, 0.0, 0.0, 0)
        if not x.is_floating_point():
            x = x.double()
        elif x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # half and bfloat16 statistics accumulate in float32, as torch's own sum does
        x = _flat(x)
        # Three read-only passes over the tensor in memory order (sum, dot, aminmax), scalar
        # arithmetic in Python: on CPU these are vectorized, while isfinite, std_mean and an inf
        # norm are 20-50x slower, aminmax over a permuted view (a channels-last activation seen as
        # NCHW) is 40x slower than over the same memory read in order, and each further small op
        # costs a dispatch. A finite sum means every element is finite (bar an overflow, which the
        # exact count covers), and it gives the mean.
        total = x.sum().item()
        nonfinite = 0 if math.isfinite(total) else int(x.numel() - torch.isfinite(x).sum())
        if nonfinite:
            x = x[torch.isfinite(x)]
            if x.numel() == 0:
                nan = float("nan")
                return cls(shape, dtype, nan, nan, nan, nonfinite)
            total = x.sum().item()
        n = x.numel()
        mean = total / n
        # variance as E[x^2] - mean^2; when the mean dominates, that difference has lost digits
        # (relative error grows as E[x^2] / variance), and a centred pass recomputes it
        square_mean = torch.dot(x, x).item() / n
        variance = square_mean - mean * mean
        if not variance * _CANCELLATION >= square_mean:
            centered = x - mean
            variance = torch.dot(centered, centered).item() / n
        std = math.sqrt(max(variance, 0.0) * n / max(n - 1, 1))
        low, high = torch.aminmax(x)
        return cls(shape, dtype, mean, std, max(-low.item(), high.item()), nonfinite)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``x``'s elements as a 1-D tensor in memory order: a view when ``x`` is dense in any dimension
    order (a permuted activation: no copy), a copy only when it overlaps or has gaps."""
    if x.is_contiguous():
        return x.view(-1)
    # a dense tensor's elements fill the slots from its storage offset on, whatever the order of
    # its dimensions: one strided view reads them all, where a permute and a view cost two dispatches
    return x.as_strided((x.numel(),), (1,)) if _dense(x) else x.reshape(-1)


def _address(x: torch.Tensor) -> int | None:
    """Where ``x``'s memory starts: its storage's address; None for a tensor with no elements or
    with no plain storage (sparse, meta)."""
    if not x.numel() or x.layout != torch.strided or x.is_meta:
        return None
    return x.untyped_storage().data_ptr()


def _dense(x: torch.Tensor) -> bool:
    """Whether ``x``'s elements fill ``numel`` consecutive memory slots (any dimension order)."""
    if x.is_contiguous() or (x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return True
    # by increasing stride, each dimension must step over exactly the block the smaller ones fill;
    # a dimension of size 1 places no element (its stride is free), a zero or negative stride fails
    filled = 1
    for stride, size in sorted((st, n) for n, st in zip(x.shape, x.stride()) if n != 1):
        if stride != filled:
            return False
        filled *= size
    return True


Leaf = torch.Tensor | TensorSummary
_DTYPE_NAMES = {d: str(d).removeprefix("torch.") for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}
# largest E[x^2] / variance for which the one-pass variance is kept: its error is then at most 16x
# the dot product's rounding (~1e-7 relative in float32), far inside every tolerance's rtol
_CANCELLATION = 16.0


def flatten_tensors(value: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensor leaves of nested tuples/lists/dicts/ModelOutputs, keyed by their dotted path."""
    # the tracer's hooks call this twice per module call: the usual cases (a tensor output, no
    # keyword arguments, one tensor argument) skip the walk
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    if type(value) is dict and not value:
        return {}
    if type(value) is tuple and len(value) == 1 and isinstance(value[0], torch.Tensor):
        return {f"{prefix}.0" if prefix else "0": value[0]}
    out: dict[str, torch.Tensor] = {}

    def visit(v: Any, path: str) -> None:
        if isinstance(v, torch.Tensor):
            out[path] = v
        elif isinstance(v, (tuple, list)):
            for i, item in enumerate(v):
                visit(item, f"{path}.{i}" if path else str(i))
        elif isinstance(v, dict) or (hasattr(v, "keys") and hasattr(v, "__getitem__")):
            for k in v.keys():
                visit(v[k], f"{path}.{k}" if path else str(k))

    visit(value, prefix)
    return out


def output_leaves(output: Any, extract: Callable[[Any], Any] | None = None, *, side: str = "model") -> dict[str, torch.Tensor]:
    """A model's final outputs by leaf path: ``extract(output)`` when given (a mapping of tensors,
    or any value holding them: a tensor, a tuple, a ModelOutput), else the output's tensor leaves."""
    if extract is None:
        return flatten_tensors(output)
    picked = extract(output)
    leaves = dict(picked) if isinstance(picked, Mapping) else flatten_tensors(picked)
    if not leaves or not all(isinstance(v, torch.Tensor) for v in leaves.values()):
        raise TypeError(f"{side}_outputs must return the output's tensors (a tensor, or a mapping or tuple of "
                        f"them), got {type(picked).__name__}")
    return leaves


def map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with ``fn`` applied to every tensor in nested tuples/namedtuples/lists/dicts."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(map_tensors(v, fn) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    return value


@dataclass
class Record:
    """One call of one module."""

    name: str
    call: int
    start: int
    end: int = -1
    inputs: dict[str, Leaf] = field(default_factory=dict)
    outputs: dict[str, Leaf] = field(default_factory=dict)
    module: nn.Module | None = field(default=None, repr=False)
    args: tuple = field(default=(), repr=False)  # full mode: the call's arguments, for re-runs
    kwargs: dict = field(default_factory=dict, repr=False)
    passthrough: bool = False  # returned its input tensor itself (Identity, Dropout in eval)

    @property
    def key(self) -> str:
        return f"{self.name}#{self.call}"

    @property
    def primary(self) -> Leaf | None:
        """The first tensor leaf of the output (what one compares when structures differ)."""
        return next(iter(self.outputs.values()), None)

    @property
    def first_input(self) -> torch.Tensor | None:
        """The first tensor among the inputs (what a module call mainly reads), if one was kept."""
        return next((v for v in self.inputs.values() if isinstance(v, torch.Tensor)), None)

    @property
    def shape(self) -> tuple[int, ...] | None:
        p = self.primary
        return None if p is None else tuple(p.shape)

    def contains(self, other: "Record") -> bool:
        return self.start < other.start and other.end < self.end


def outputs_read_after(record: Record, records: Sequence[Record]) -> set[str]:
    """The keys of ``record``'s output leaves that a call starting after it ends reads as an input,
    or that the model returns (the root's outputs). A tracer keeps one copy per tensor and a view of
    that copy for a view of it, so a leaf is read where a later input is that copy or lies in its
    memory; a field the model computes and never reads (a final norm beside the hidden states a head
    takes) is in no later input."""
    later = [leaf for r in records if r.start > record.end for leaf in r.inputs.values()]
    later += [leaf for r in records if r.name == ROOT and r is not record for leaf in r.outputs.values()]
    spans = [_span(t) for t in later if isinstance(t, torch.Tensor)]
    ids = {id(t) for t in later}
    read = set()
    for key, leaf in record.outputs.items():
        if id(leaf) in ids:
            read.add(key)
        elif isinstance(leaf, torch.Tensor) and (own := _span(leaf)) is not None and any(
                s is not None and s[0] == own[0] and s[1] < own[2] and own[1] < s[2] for s in spans):
            read.add(key)
    return read


def _span(t: torch.Tensor) -> tuple[torch.device, int, int] | None:
    """The device and the byte range ``[low, high)`` that ``t``'s elements occupy; None when it has none."""
    if _address(t) is None:
        return None
    low = sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if st < 0)
    high = sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if st > 0)
    size = t.element_size()
    return t.device, t.data_ptr() + low * size, t.data_ptr() + (high + 1) * size


def _version(t: torch.Tensor) -> int | None:
    """The version counter; None for inference tensors (made under torch.inference_mode()), which keep none."""
    try:
        return t._version
    except RuntimeError:  # an inference tensor: asking is the cheapest test, the hooks ask for every tensor
        return None


def has_nonfinite(leaves: dict[str, Leaf]) -> bool:
    """Whether a tensor (or a statistics summary) among ``leaves`` holds a NaN or an infinity."""
    return any(_nonfinite(v) for v in leaves.values())


def _nonfinite(leaf: Leaf) -> bool:
    if isinstance(leaf, TensorSummary):
        return leaf.nonfinite > 0
    # a finite sum means finite elements (an overflowing sum falls back to the exact check):
    # one vectorized pass instead of isfinite's much slower elementwise one
    return (leaf.is_floating_point() or leaf.is_complex()) and not cmath.isfinite(leaf.sum().item()) \
        and not bool(torch.isfinite(leaf).all())


def eager_module(model: Any) -> Any:
    """The module a tracer hooks for ``model``: the one inside ``torch.compile``'s wrapper (compiled
    graphs run no submodule hooks, and the compiler would trace the hooks themselves), else ``model``
    as it is. The wrapper and its module share their tensors: one is the other's weights."""
    inner = getattr(model, "_orig_mod", None)
    compiled = type(model).__name__ == "OptimizedModule" and type(model).__module__.startswith("torch._dynamo")
    return inner if compiled and isinstance(inner, nn.Module) else model


def untraceable_notes(side: str, given: Any, traced: Any) -> list[str]:
    """What a comparison of ``given`` (traced as ``traced``, see :func:`eager_module`) cannot see."""
    if given is not traced:
        return [f"the {side} is compiled (torch.compile): its eager module was traced and compared, as "
                f"layer hooks cannot run inside compiled graphs; what the compiler changes (fused kernels, "
                f"their rounding) is not checked here"]
    if isinstance(traced, torch.jit.ScriptModule):
        return [f"the {side} is a TorchScript module: its submodules run without Python hooks, so only its "
                f"outputs are compared; compare the eager module it was scripted from to localize an error"]
    return []


def hookable_modules(model: nn.Module, **options: Any) -> Iterator[tuple[str, nn.Module]]:
    """``model.named_modules(**options)`` without TorchScript modules and what they contain: they
    take no Python hooks, so a scripted submodule is traced as part of the module calling it."""
    scripted: list[str] = []
    for name, module in model.named_modules(**options):
        if any(name == s or name.startswith(s + ".") or s == "" for s in scripted):
            continue
        if isinstance(module, torch.jit.ScriptModule):
            scripted.append(name)
            continue
        yield name, module


def name_filter(pattern: str | Callable[[str], bool] | None, *, option: str = "include") -> Callable[[str], bool] | None:
    """A predicate on qualified module names: a regex (``re.search``) or a predicate itself; None stays None."""
    if pattern is None or callable(pattern):
        return pattern
    if not isinstance(pattern, str):
        raise type_error(option, pattern, "a regex string or a callable")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{option}={pattern!r} is not a valid regex ({exc}); it is matched with "
                         f"re.search against qualified module names such as 'blocks.0.attn'") from None
    return lambda name: compiled.search(name) is not None


class _Arena:
    """Where a full trace's copies of large CPU tensors live: carved one after another out of big
    blocks, not allocated one by one. Copies live until the comparison ends, the forward's own
    tensors only until their consumer ran; allocated from one heap, each freed activation leaves a
    hole between two copies, and a trace of ConvNeXt-XL at 224 held 0.23 GiB of such holes on top
    of its 0.93 GiB of copies. Blocks cost only the pages written (CPU memory is mapped lazily).
    A copy keeps the original's strides (dense tensors in any dimension order fill exactly their
    ``numel`` slots); other tensors, and those on accelerators (whose caching allocators pool
    memory by themselves), are cloned as usual.

    Spilled (``spill``: a folder), a block is a file there mapped into memory; :meth:`release`
    gives the blocks' pages back to the kernel (Linux ``madvise(MADV_DONTNEED)``; elsewhere the
    pages stay resident and spilling saves nothing), and a full block is released at once. The
    file is preallocated, so a full disk is an OSError naming the folder rather than a bus error
    at a later page fault, and unlinked as soon as it is mapped, so nothing is left behind.
    """

    BLOCK = 256 * 2**20
    SMALLEST = 2**20  # below this, a clone costs no hole worth saving
    ALIGN = 64

    def __init__(self, spill: Path | None = None, *, auto: bool = False) -> None:
        self._block: torch.Tensor | None = None
        self._used = 0
        self._spill = spill
        self._auto = auto
        self.allowance = AUTO_IN_MEMORY if auto else 0  # bytes of blocks in memory before they go to files
        self._in_memory = 0  # bytes of the blocks in memory
        self._mapped: list[torch.Tensor] = []  # the spilled blocks
        self.spilled_bytes = 0
        self.overflow_bytes = 0  # auto: bytes kept in memory beyond the allowance (spilling declined or failed)
        self.declined: str | None = None  # auto: why the copies beyond the allowance stay in memory

    def copy(self, t: torch.Tensor) -> torch.Tensor:
        nbytes = t.numel() * t.element_size()
        if t.device.type != "cpu" or nbytes < self.SMALLEST or t.layout != torch.strided or not _dense(t):
            return t.detach().clone()
        if self._block is None or self._used + nbytes > self._block.numel():
            self.release()
            self._block, self._used = self._new_block(max(self.BLOCK, nbytes)), 0
        start = self._used
        self._used += -(-nbytes // self.ALIGN) * self.ALIGN
        if self._mapped and self._block is self._mapped[-1]:
            self.spilled_bytes += nbytes
        elif self._auto and self._in_memory > self.allowance:
            self.overflow_bytes += nbytes
        copy = self._block[start:start + nbytes].view(t.dtype).as_strided(t.shape, t.stride())
        return copy.copy_(t.detach())

    def in_memory(self, copy: torch.Tensor) -> bool:
        """Whether ``copy`` (one this arena made) stays in memory: it is not in a spilled block."""
        ptr = copy.untyped_storage().data_ptr()
        return not any(block.untyped_storage().data_ptr() == ptr for block in self._mapped)

    def release(self) -> None:
        """Give the pages of the spilled blocks back to the kernel; their contents stay readable."""
        for block in self._mapped:
            _dont_need(block)

    def _new_block(self, size: int) -> torch.Tensor:
        if self._spill is not None and self._in_memory >= self.allowance:
            try:
                return self._file_block(size)
            except OSError as exc:
                if not self._auto:
                    raise
                self._spill, self.declined = None, str(exc)  # auto: the trace goes on in memory
        self._in_memory += size
        return _SPARE_BLOCKS.take(size)

    def _file_block(self, size: int) -> torch.Tensor:
        try:
            fd, name = tempfile.mkstemp(prefix=".harness-trace-", suffix=".bin", dir=self._spill)
        except OSError as exc:
            raise type(exc)(exc.errno, f"cannot spill the trace to {self._spill}: {exc.strerror}") from exc
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, size)
            else:
                os.ftruncate(fd, size)
            block = torch.from_file(name, shared=True, size=size, dtype=torch.uint8)
        except OSError as exc:
            raise type(exc)(exc.errno, f"cannot spill the trace to {self._spill} ({size / 2**20:.0f} MiB "
                                       f"more): {exc.strerror}") from exc
        finally:
            os.close(fd)
            os.unlink(name)
        self._mapped.append(block)
        return block


class _SpareBlocks:
    """In-memory arena blocks handed from one trace to the next.

    A block's pages are mapped by the kernel the first time they are written, and zeroed: for a
    fresh block that costs three times the copy itself (ConvNeXt-T, float32: a full trace took 1.7x
    a plain forward against 1.3x for cloning each output, whose small allocations ``malloc`` serves
    from memory it mapped before). A block whose copies are all gone (its trace was dropped) is
    written again by the next trace, with its pages in place. Each block is an anonymous mapping
    that the copies view through :func:`torch.frombuffer`; while any copy lives, the mapping has a
    reference beyond this list, so a block is taken only when nothing else refers to it. At most
    ``KEEP`` bytes of blocks are listed (the newest); older ones are freed with their last copy.
    """

    KEEP = 2 * _Arena.BLOCK

    def __init__(self) -> None:
        self._blocks: list[mmap.mmap] = []

    def take(self, size: int) -> torch.Tensor:
        for i in range(len(self._blocks)):
            # a live copy's storage holds one more reference than this list does
            if len(self._blocks[i]) >= size and sys.getrefcount(self._blocks[i]) == _LISTED_ONLY:
                block = self._blocks.pop(i)
                self._blocks.append(block)
                return torch.frombuffer(block, dtype=torch.uint8, count=size)
        block = mmap.mmap(-1, size)
        self._blocks.append(block)
        while sum(len(b) for b in self._blocks) > max(self.KEEP, size):
            self._blocks.pop(0)
        return torch.frombuffer(block, dtype=torch.uint8)

    def clear(self) -> None:
        """Forget every block (each is freed with its last copy)."""
        self._blocks.clear()


def _references_when_listed() -> int:
    """What ``sys.getrefcount`` says of an object that only a list refers to (read as ``take`` reads it)."""
    listed = [object()]
    return sys.getrefcount(listed[0])


_LISTED_ONLY = _references_when_listed()
_SPARE_BLOCKS = _SpareBlocks()
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_MADV_DONTNEED = 4


def _dont_need(block: torch.Tensor) -> None:
    """Unmap ``block``'s pages from this process (a shared file mapping keeps them in the file)."""
    if _LIBC is not None:
        _LIBC.madvise(ctypes.c_void_p(block.data_ptr()), ctypes.c_size_t(block.numel()), _MADV_DONTNEED)


AUTO = "auto"
AUTO_IN_MEMORY = 256 * 2**20  # spill="auto": each trace's large copies kept in memory before blocks go to files
_MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


def is_auto_spill(spill: Any) -> bool:
    """Whether ``spill`` asks for the automatic choice (``"auto"``) rather than a folder or nothing."""
    return isinstance(spill, str) and spill == AUTO


def spill_folder(spill: Any) -> Path | None:
    """The folder a trace spills to: ``None``/``False``: none, ``True`` or ``"auto"``: the temp
    folder, or a path; a TypeError for another type, a ValueError for a path that is no existing folder."""
    if spill is None or spill is False:
        return None
    if spill is True or spill == AUTO:
        return Path(tempfile.gettempdir())
    if not isinstance(spill, (str, os.PathLike)):
        raise type_error("spill", spill, "a folder path, True (the temp folder), 'auto' or None")
    folder = Path(spill)
    if not folder.is_dir():
        raise ValueError(f"spill folder {folder} {'is not a folder' if folder.exists() else 'does not exist'}; "
                         f"create it, or pass spill=True for the temp folder (CLI: --spill without a folder)")
    return folder


@functools.lru_cache(maxsize=8)
def auto_spill_declined(folder: Path) -> str | None:
    """Why ``spill="auto"`` keeps a trace in memory rather than in files in ``folder``; None when it spills."""
    if _LIBC is None:
        return "this platform keeps a mapped file's pages resident, so spilling would save no memory"
    fstype = _filesystem(folder)
    if fstype in _MEMORY_FILESYSTEMS:
        return f"the temp folder {folder} is itself in memory ({fstype}); --spill DIR names a folder on disk"
    return None


def _filesystem(folder: Path) -> str | None:
    """The type of the filesystem holding ``folder`` (the longest mount point above it, /proc/self/mounts)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    path, best, fstype = os.path.realpath(folder), -1, None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, fstype = len(point), fields[2]
    return fstype


class _SharedCopies:
    """The tensors another trace kept, found by value: grouped by (shape, strides, dtype, device),
    then by their sum (computed once per group, when a tensor of that layout is first looked up),
    and confirmed by ``torch.equal``. A sum is one vectorized read, cheaper than the clone it
    saves; bitwise equal tensors of one layout have equal sums (the same reduction order). What
    a lookup read of a spilled trace is released again (``release``)."""

    def __init__(self, records: list[Record], release: Callable[[], None] = lambda: None) -> None:
        self._release = release
        self._groups: dict[tuple, list[torch.Tensor]] = {}
        seen: set[int] = set()
        for record in records:
            for leaf in (*record.inputs.values(), *record.outputs.values()):
                if isinstance(leaf, torch.Tensor) and leaf.numel() and id(leaf) not in seen:
                    seen.add(id(leaf))
                    self._groups.setdefault(self._layout(leaf), []).append(leaf)
        self._sums: dict[tuple, dict[Any, list[torch.Tensor]]] = {}

    @staticmethod
    def _layout(t: torch.Tensor) -> tuple:
        return tuple(t.shape), t.stride(), t.dtype, t.device

    def find(self, t: torch.Tensor) -> torch.Tensor | None:
        """A kept tensor bitwise equal to ``t`` in the same layout, or None."""
        layout = self._layout(t)
        group = self._groups.get(layout)
        if not group or t.is_sparse or t.is_quantized:
            return None
        sums = self._sums.get(layout)
        if sums is None:
            sums = self._sums[layout] = {}
            for kept in group:
                sums.setdefault(kept.sum().item(), []).append(kept)
        found = next((kept for kept in sums.get(t.sum().item(), ()) if torch.equal(kept, t)), None)
        self._release()
        return found


class Tracer:
    """Records every module call of ``model`` while the context is active.

    Args:
        model: the module to trace (all submodules, and the root as ``"<root>"``).
        mode: ``"full"`` (detached tensor copies) or ``"summary"`` (statistics only).
        include: regex (``re.search`` on the qualified name) or predicate selecting modules.
        budget: a :class:`harness.memory.MemoryBudget` charged with every copy kept (full mode);
            it raises :class:`harness.memory.TraceTooLarge` before the trace outgrows memory.
        record_inputs: also keep call inputs (needed for culprit localization).
        share: a finished full-mode trace (the other model's, in a comparison) whose copies this
            one reuses: a tensor bitwise equal to one it kept (same shape, strides, dtype, device
            and values) is kept as that very copy, not a second one. A faithful port's trace then
            costs little beyond its twin's (at float64 most layers agree bitwise).
        spill: a folder (or ``True``: the temp folder) where the copies of large CPU tensors are
            kept in files instead of memory (see the module docstring); :meth:`release` after
            reading them gives their memory back. ``"auto"``: the temp folder, once the trace's
            large copies exceed ``AUTO_IN_MEMORY``, where spilling saves memory.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        mode: Mode = "full",
        include: str | Callable[[str], bool] | None = None,
        record_inputs: bool = True,
        budget: Any = None,
        share: "Tracer | None" = None,
        spill: str | os.PathLike | bool | None = None,
    ) -> None:
        check_module("Tracer(model)", model)
        self.spill = spill_folder(spill)
        self._auto = is_auto_spill(spill)
        self._declined = auto_spill_declined(self.spill) if self._auto else None
        if self._declined is not None:
            self.spill = None
        check_choice("mode", mode, ("full", "summary"))
        self.budget = budget
        self.model = model
        self.mode: Mode = mode
        self.record_inputs = record_inputs
        self._include = name_filter(include)
        self.records: list[Record] = []
        self.first_nonfinite: str | None = None
        self._handles: list[Any] = []
        self._open: dict[int, list[tuple[Record, dict[int, int]]]] = {}  # per module: calls in progress
        self._counts: dict[str, int] = {}
        self._clock = 0
        # id(tensor) -> (weak ref, version, copy or summary): an output that is the next call's
        # input is copied (summarized) once; the version counter tells an in-place change apart.
        self._copies: dict[int, tuple[weakref.ref, int, Leaf]] = {}
        # storage address -> (weak ref, version, copy or summary) of dense tensors kept: a new view
        # of one (a permute, a reshape between modules) becomes the same view of its copy, not a
        # copy, or takes its summary, not another pass over the same elements
        self._dense: dict[int, tuple[weakref.ref, int, Leaf]] = {}
        # id(kept copy or summary) -> whether it holds a NaN/Inf; the records keep what it names alive
        self._nonfinite: dict[int, bool] = {}
        if share is not None and not isinstance(share, Tracer):
            raise type_error("Tracer(share=...)", share, "a finished harness.Tracer or None")
        self._share = share
        self._shared: _SharedCopies | None = None
        self._arena = _Arena(self.spill, auto=self._auto)

    # -- context management ------------------------------------------------------------------
    def __enter__(self) -> "Tracer":
        if self._handles:
            raise RuntimeError("this Tracer is already active; leave it before entering it again")
        self.records.clear()
        self.first_nonfinite = None
        self._counts.clear()
        self._open.clear()
        self._clock = 0
        self._arena = _Arena(self.spill, auto=self._auto)
        if self._share is not None and self.mode == "full":
            self._shared = _SharedCopies(self._share.records, self._share.release)
        try:
            for name, module in hookable_modules(self.model):
                name = name or ROOT
                if self._include is not None and name != ROOT and not self._include(name):
                    continue
                self._handles.append(module.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True))
                self._handles.append(module.register_forward_hook(self._post_hook(name), with_kwargs=True))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
        self.release()

    def release(self) -> None:
        """Give the memory of spilled copies that were read back to the kernel (nothing without ``spill``)."""
        self._arena.release()

    @property
    def spilled_bytes(self) -> int:
        """Bytes of copies this trace keeps in files (``spill``)."""
        return self._arena.spilled_bytes

    @property
    def spill_allowance(self) -> int:
        """Bytes of large copies kept in memory before the rest are spilled (``"auto"``; 0 otherwise)."""
        return self._arena.allowance

    @property
    def spill_declined(self) -> tuple[int, str] | None:
        """``spill="auto"``: the bytes of large copies kept in memory beyond the allowance, and why
        they did not go to files (the temp folder is in memory, the platform, a refused file)."""
        overflow = self._arena.overflow_bytes
        reason = self._arena.declined or self._declined
        return (overflow, reason) if overflow and reason else None

    def remove(self) -> None:
        """Remove every hook this tracer registered (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._open.clear()
        self._copies.clear()
        self._shared = None
        self._dense.clear()
        self._nonfinite.clear()

    @property
    def active(self) -> bool:
        return bool(self._handles)

    # -- hooks -----------------------------------------------------------------------------------
    def _keep(self, t: torch.Tensor) -> Leaf:
        return self._copy(t) if self.mode == "full" else self._summary(t)

    def _kept(self, t: torch.Tensor, version: int | None) -> Leaf | None:
        """What was kept of ``t`` already, if ``t`` is unchanged since (same object, same ``version``)."""
        entry = self._copies.get(id(t))
        if entry is not None and entry[0]() is t and entry[1] == version is not None:
            return entry[2]
        return None

    def _summary(self, t: torch.Tensor) -> TensorSummary:
        version = _version(t)
        summary = self._kept(t, version)
        if summary is not None:
            return summary
        address = _address(t) if version is not None else None
        summary = self._summary_of_same_elements(t, address, version)
        if summary is None:
            summary = TensorSummary.of(t)
            if address is not None and _dense(t):
                self._dense[address] = (weakref.ref(t), version, summary)
        self._copies[id(t)] = (weakref.ref(t), version, summary)
        return summary

    def _summary_of_same_elements(self, t: torch.Tensor, address: int | None, version: int | None) -> TensorSummary | None:
        """The summary of an earlier dense tensor over exactly ``t``'s elements (at ``address``,
        unchanged since: same ``version``), with ``t``'s shape: a permute or reshape between
        modules. Its statistics read the same memory in the same order: the very same numbers."""
        entry = self._dense.get(address) if address is not None else None
        if entry is None:
            return None
        base, summary = entry[0](), entry[2]
        if base is None or version != entry[1] or not self._same_root(t, base) or t.dtype != base.dtype \
                or t.storage_offset() != base.storage_offset() or t.numel() != base.numel() or not _dense(t):
            return None
        return dataclasses.replace(summary, shape=tuple(t.shape))

    def _copy(self, t: torch.Tensor) -> torch.Tensor:
        version = _version(t)
        copy = self._kept(t, version)
        if copy is not None:
            return copy
        address = _address(t) if version is not None else None
        copy = self._view_of_copy(t, address, version)
        if copy is None and self._shared is not None:
            copy = self._shared.find(t)
        if copy is None:
            copy = self._arena.copy(t)
            if self.budget is not None and self._arena.in_memory(copy):  # a spilled copy costs disk
                self.budget.charge(copy.nbytes, self, started=len(self._counts), modules=len(self._handles) // 2)
            if address is not None and copy.stride() == t.stride() and _dense(t):
                self._dense[address] = (weakref.ref(t), version, copy)
        self._copies[id(t)] = (weakref.ref(t), version, copy)
        return copy

    def _view_of_copy(self, t: torch.Tensor, address: int | None, version: int | None) -> torch.Tensor | None:
        """``t`` as a view of an earlier copy, when ``t`` views the same unchanged memory (at
        ``address``, same ``version``) as a dense tensor copied before (same root tensor, dtype;
        inside its elements)."""
        entry = self._dense.get(address) if address is not None else None
        if entry is None:
            return None
        base, copy = entry[0](), entry[2]
        if base is None or version != entry[1] or t.dtype != base.dtype or t.device != base.device:
            return None
        if not self._same_root(t, base):
            return None
        low = t.storage_offset()
        high = low + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
        if min(t.stride(), default=0) < 0 or low < base.storage_offset() or high >= base.storage_offset() + base.numel():
            return None
        return copy.as_strided(t.shape, t.stride(), copy.storage_offset() + low - base.storage_offset())

    @staticmethod
    def _same_root(t: torch.Tensor, other: torch.Tensor) -> bool:
        """Whether two tensors view one root tensor: another tensor on the same memory keeps a
        version counter of its own, which says nothing about changes made through this one."""
        return (t._base if t._base is not None else t) is (other._base if other._base is not None else other)

    def _pre_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            call = self._counts.get(name, 0)
            self._counts[name] = call + 1
            record = Record(name=name, call=call, start=self._tick())
            versions = {id(a): _version(a) for a in args if isinstance(a, torch.Tensor)}
            if self.record_inputs and self.mode == "full":
                record.module = module
                record.args, record.kwargs = map_tensors(args, self._copy), map_tensors(kwargs, self._copy)
                # the leaves are views of the cloned arguments: one copy serves both uses
                record.inputs = flatten_tensors(record.args, "args") | flatten_tensors(record.kwargs, "kwargs")
            elif self.record_inputs:
                leaves = flatten_tensors(args, "args") | flatten_tensors(kwargs, "kwargs")
                record.inputs = {k: self._summary(v) for k, v in leaves.items()}
            self._open.setdefault(id(module), []).append((record, versions))

        return hook

    def _post_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            stack = self._open.get(id(module))
            if not stack:  # hooks registered mid-forward: nothing to pair with
                return
            record, versions = stack.pop()
            record.end = self._tick()
            # the input object itself, unchanged: an in-place op (ReLU(inplace=True)) also returns
            # its input, but bumps its version counter, and it computes: that is no pass-through
            record.passthrough = isinstance(output, torch.Tensor) and any(output is a for a in args) \
                and versions.get(id(output)) == _version(output) is not None
            record.outputs = {k: self._keep(v) for k, v in flatten_tensors(output).items()}
            # the first call that makes a NaN/Inf, not one that received it through its inputs
            if self.first_nonfinite is None and self._holds_nonfinite(record.outputs) \
                    and not self._holds_nonfinite(record.inputs):
                self.first_nonfinite = record.key
            self.records.append(record)

        return hook

    def _holds_nonfinite(self, leaves: dict[str, Leaf]) -> bool:
        """:func:`has_nonfinite`, reading each kept copy once: a container returns its last child's
        output, an ``Identity`` its input, and their records hold that very copy."""
        for leaf in leaves.values():
            known = self._nonfinite.get(id(leaf))
            if known is None:
                known = self._nonfinite[id(leaf)] = _nonfinite(leaf)
            if known:
                return True
        return False

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    # -- queries ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def by_key(self) -> dict[str, Record]:
        return {r.key: r for r in self.records}
