"""Candidate / reference forward time of every registered pair, float32, eval, inference mode.

Each pair is built once (identical weights on both sides), then its two forwards run interleaved
(``bench_record.interleaved_times``) on the pair's own inputs, through the pair's ``candidate_call``
/ ``reference_call`` when it declares them. The ratio candidate / reference (the median of the
per-round ratios, ``bench_record.paired_ratio``) is the result: at most
1.0 means our implementation costs no more than the one it is checked against. It is reported,
never asserted: a line per pair as it finishes, one table at the end, and ``reports/bench.json``
(section ``pairs``). Nightly pairs (full sizes) join with ``--nightly``.

Benchmarks only (``tox -e bench``): without ``--benchmark-only`` timing is off and the parity
suite already runs every one of these forwards, so the tests skip.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable

import pytest
import torch

import harness
from bench_record import interleaved_times, paired_ratio, record, rounds_for, say

NIGHTLY = set(harness.list_pairs(tag="nightly"))
PAIRS = [pytest.param(n, marks=[pytest.mark.nightly] if n in NIGHTLY else []) for n in harness.list_pairs()]


def _forward(model: torch.nn.Module, how: Callable | None, call: harness.Call) -> Callable[[], Any]:
    def run():
        with torch.inference_mode():
            return how(model, call) if how is not None else call(model)

    return run


@pytest.fixture(scope="module")
def table(request) -> dict[str, dict]:
    """Rows gathered by the tests of this module, printed as one table when the module ends."""
    rows: dict[str, dict] = {}
    yield rows
    if rows:
        say(request.config, [f"{'pair':<36} {'candidate ms':>12} {'reference ms':>12} {'ratio':>7}"] + [
            f"{name:<36} {row['candidate_s'] * 1e3:>12.2f} {row['reference_s'] * 1e3:>12.2f} "
            f"{row['ratio']:>7.3f}{'' if row['ratio'] <= 1.0 else '  > 1'}" for name, row in sorted(rows.items())])


@pytest.mark.bench
@pytest.mark.parametrize("name", PAIRS)
def test_bench_pair_forward(benchmark, table, request, name: str) -> None:
    if benchmark.disabled:
        pytest.skip("forward ratios are timed only with --benchmark-only (tox -e bench)")
    pair = harness.get_pair(name)
    candidate, reference = pair.build(dtype=torch.float32)
    call = pair.inputs(dtype=torch.float32)
    sides = {"candidate": _forward(candidate, pair.candidate_call, call),
             "reference": _forward(reference, pair.reference_call, call)}
    rounds = rounds_for(list(sides.values()), budget_s=4.0, low=9, high=31)
    times: dict[str, list[float]] = {}
    benchmark.group = "pair forward, candidate vs reference"
    benchmark.pedantic(lambda: times.update(interleaved_times(sides, rounds=rounds)), rounds=1, iterations=1)
    seconds = {side: statistics.median(values) for side, values in times.items()}
    entry = {"candidate_s": seconds["candidate"], "reference_s": seconds["reference"],
             "ratio": round(paired_ratio(times, "candidate", "reference"), 4), "rounds": rounds}
    benchmark.extra_info.update(entry)
    record("pairs", name, entry)
    table[name] = entry
    say(request.config, [f"{name}: candidate/reference forward {entry['ratio']:.3f} "
                          f"({seconds['candidate'] * 1e3:.2f} ms / {seconds['reference'] * 1e3:.2f} ms, {rounds} rounds)"])
