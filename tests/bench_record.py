"""Interleaved timing and ``reports/bench.json`` for the benchmark suite (``tox -e bench``).

Ratios are what the benchmarks report: variants are timed in turn, round after round (A B C, C B
A, ...); a ratio is taken within each round and its median reported (:func:`paired_ratio`), so a
machine whose speed drifts during the run (other jobs on shared cores) moves both sides of every
ratio alike. Time is the process's CPU
time (``time.process_time``): a process descheduled by other jobs is not charged for the wait.

``reports/bench.json`` gathers the results of every benchmark module, section by section
(``{"pairs": {name: {...}}, "tracer": {model: {...}}}``); each entry is merged into the file as it
completes and the file is written atomically.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from harness.files import atomic_write_text

PATH = Path(__file__).resolve().parents[1] / "reports" / "bench.json"
TIMER = ("process CPU seconds (time.process_time): seconds are medians over interleaved rounds, "
         "ratios medians of the per-round ratios")


def interleaved_times(variants: dict[str, Callable[[], Any]], *, rounds: int) -> dict[str, list[float]]:
    """CPU seconds of each variant in each of ``rounds`` rounds that run every variant once in
    turn, the order reversed every other round (whoever runs second finds caches and the
    allocator as the first left them)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(rounds):
        for name, fn in (variants.items() if i % 2 == 0 else reversed(variants.items())):
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    return times


def paired_ratio(times: dict[str, list[float]], variant: str, baseline: str) -> float:
    """Median over rounds of ``variant``'s time over ``baseline``'s in the same round: each ratio
    compares two runs seconds apart, so drift in the machine's speed cancels within a round."""
    return statistics.median(round_ratios(times, variant, baseline))


def round_ratios(times: dict[str, list[float]], variant: str, baseline: str) -> list[float]:
    """``variant``'s time over ``baseline``'s, round by round."""
    return [v / b for v, b in zip(times[variant], times[baseline])]


def median_interval(values: list[float], *, confidence: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free interval for the median of the population ``values`` were drawn from:
    ``(low, high, coverage)`` with ``low``/``high`` the k-th smallest and k-th largest values, k the
    largest rank whose interval covers the median with probability ``coverage >= confidence``
    (the count of values below the median is Binomial(n, 1/2)). With too few values for
    ``confidence`` (n < 6 at 95%) the interval is the whole range and ``coverage`` says how sure
    that is."""
    ordered = sorted(values)
    n = len(ordered)
    k = 1
    while k + 1 <= n // 2 and _coverage(n, k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], _coverage(n, k)


def _coverage(n: int, k: int) -> float:
    """P(the k-th smallest of n draws <= median <= the k-th largest) = 1 - 2 P(Binomial(n, 1/2) < k)."""
    return 1 - 2 * sum(math.comb(n, j) for j in range(k)) / 2 ** n


def rounds_for(fns: list[Callable[[], Any]], *, budget_s: float, low: int = 3, high: int = 15) -> int:
    """Rounds that fit ``budget_s`` CPU seconds, from one warm-up call of each function (which also warms caches)."""
    start = time.process_time()
    for fn in fns:
        fn()
    one = max(time.process_time() - start, 1e-6)
    return max(low, min(high, int(budget_s / one)))


def record(section: str, key: str, entry: dict[str, Any]) -> Path:
    """Merge ``entry`` into ``reports/bench.json`` as ``[section][key]``."""
    try:
        document = json.loads(PATH.read_text(encoding="utf-8")) if PATH.exists() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{PATH} is not valid JSON ({exc}); delete it to start a new benchmark record") from None
    document.setdefault(section, {})[key] = entry
    document["timer"] = TIMER
    return atomic_write_text(PATH, json.dumps(document, indent=2, sort_keys=True) + "\n")


def say(config: pytest.Config, lines: list[str]) -> None:
    """Write ``lines`` to the terminal past pytest's output capture (the results are the point of a benchmark)."""
    with config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print("\n" + "\n".join(lines), flush=True)
