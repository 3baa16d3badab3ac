"""Memory budget of full-mode traces: refuse a trace that will not fit before the allocator does.

A full-mode comparison keeps a copy of every module's inputs and outputs, for both models, until
both have run. Its size is not known before the forward passes, so it is estimated from the
first calls: each copy a tracer keeps is charged to a :class:`MemoryBudget` shared by the
comparison's traces. With ``kept`` bytes after a fraction ``p`` of the hooked modules have
started, a trace is projected to ``kept / p``; the traces still to come (the reference's, while
the candidate is traced) are assumed to be as large as the largest seen so far, so a comparison
whose second trace would not fit is refused while the first is being taken. The reference's
trace reuses the candidate's copies of the tensors on which the two agree bitwise
(:class:`harness.trace.Tracer` ``share``); those cost nothing and are not charged, so for a
faithful port the assumption is pessimistic: the comparison is refused early rather than late. The budget refuses
(:class:`TraceTooLarge`, a ValueError and a MemoryError) when

- the bytes actually kept exceed the limit (``HEADROOM`` of the memory available when the
  comparison started; the rest is left to the forward passes themselves), or
- once half of a trace's modules have started, the projection for all traces exceeds it
  (earlier projections are not trusted: nested containers start long before they finish).

The error gives the estimate and names ``--spill`` (``spill=True``: large copies kept in files and
read back as they are measured, not charged here) and ``--summary`` (``mode="summary"``), which
keeps statistics only; ``mode="auto"`` (``--auto-summary``) switches to summary by itself. Available memory is
:func:`available_bytes`: ``MemAvailable`` of ``/proc/meminfo`` bounded by the cgroup limit on
CPU, free plus cached-but-unused memory on CUDA; unknown elsewhere, and then nothing is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["TraceTooLarge", "MemoryBudget", "available_bytes", "trace_budget", "HEADROOM"]

HEADROOM = 0.8
_PROJECT_FROM = 0.5  # fraction of a trace's modules started before its projection is trusted


def _gib(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps at least one whole unit (12.5 KiB, 3.20 GiB)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


class TraceTooLarge(ValueError, MemoryError):
    """A full-mode trace that would not fit in the memory available; the message gives the estimate."""

    def __init__(self, *, needed: float, kept: int, side: str, started: int, modules: int, available: int,
                 device: str) -> None:
        self.needed, self.kept, self.side, self.available, self.device = needed, kept, side, available, device
        self.started, self.modules = started, modules
        super().__init__(
            f"{self.estimate()}; rerun with --spill (spill=True: the trace kept in files, exact layer errors), "
            f"--summary (mode='summary': statistics only, layer errors become lower bounds) or --auto-summary "
            f"(mode='auto') to switch when a full trace does not fit"
        )

    def estimate(self) -> str:
        return (f"a full-mode trace would need about {_gib(self.needed)} ({self.side} trace: {_gib(self.kept)} kept "
                f"after {self.started} of {self.modules} modules had started) but {_gib(self.available)} of memory "
                f"is available on {self.device}")


def _cgroup_room() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Bytes that can still be allocated on ``device``; None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
        available = next(int(line.split()[1]) * 1024 for line in lines if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    room = _cgroup_room()
    return available if room is None else min(available, room)


class MemoryBudget:
    """Bytes kept by the traces of one comparison, against ``HEADROOM`` of ``available``."""

    def __init__(self, available: int, *, sides: Sequence[str] = ("candidate", "reference"), device: str = "cpu"):
        self.available, self.limit, self.device = available, HEADROOM * available, device
        self.sides = tuple(sides)
        self._kept: dict[int, int] = {}  # per tracer, in the order they started charging

    def charge(self, nbytes: int, tracer: Any, *, started: int, modules: int) -> None:
        """Add a copy of ``nbytes`` kept by ``tracer``, of whose ``modules`` hooked modules ``started``
        have started; raise TraceTooLarge when the traces will not fit."""
        key = id(tracer)
        self._kept[key] = self._kept.get(key, 0) + nbytes
        kept = sum(self._kept.values())
        modules = max(modules, 1)
        started = min(max(started, 1), modules)
        progress = started / modules
        index = list(self._kept).index(key)
        done = list(self._kept.values())[:index]  # traces that finished before this one
        to_come = max(len(self.sides) - index - 1, 0)
        mine = self._kept[key] / progress
        projected = sum(done) + mine + max([mine, *done]) * to_come
        trusted = max(kept, projected if progress >= _PROJECT_FROM else 0.0)
        if trusted > self.limit:
            side = self.sides[index] if index < len(self.sides) else f"trace {index + 1}"
            raise TraceTooLarge(needed=max(trusted, projected), kept=self._kept[key], side=side, started=started,
                                modules=modules, available=self.available, device=self.device)


def trace_budget(mode: str, model: torch.nn.Module) -> MemoryBudget | None:
    """The budget of a comparison's traces on ``model``'s device; None in summary mode or when unknown."""
    if mode == "summary":
        return None
    device = next((str(t.device) for t in model.parameters()), None) or next(
        (str(t.device) for t in model.buffers()), "cpu")
    available = available_bytes(device)
    return None if available is None else MemoryBudget(available, device=device)
