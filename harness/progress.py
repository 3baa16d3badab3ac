"""Progress of a long comparison on stderr: one status line, rewritten at each stage.

Stages: build, trace candidate, trace reference, align, localize. The line shows the stage and the
seconds since the comparison started, and is cleared when it ends. It is written only when stderr
is a terminal (pytest, pipes and log files stay quiet); ``HARNESS_PROGRESS=1`` forces it on and
``HARNESS_PROGRESS=0`` off.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["stage", "done", "enabled"]

_started: float | None = None


def enabled() -> bool:
    forced = os.environ.get("HARNESS_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def stage(name: str, detail: str = "") -> None:
    """Announce that ``name`` starts (the first stage also starts the clock)."""
    global _started
    if not enabled():
        return
    if _started is None:
        _started = time.perf_counter()
    elapsed = time.perf_counter() - _started
    text = f"[parity {elapsed:5.1f}s] {name}{' ' + detail if detail else ''} ..."
    sys.stderr.write(("\r\x1b[K" if sys.stderr.isatty() else "") + text + ("" if sys.stderr.isatty() else "\n"))
    sys.stderr.flush()


def done() -> None:
    """The comparison finished: clear the status line and reset the clock."""
    global _started
    if _started is not None and enabled() and sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()
    _started = None
