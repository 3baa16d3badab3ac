"""Candidate / reference forward time of every registered pair, float32, eval, inference mode.

Each pair is built once (identical weights on both sides), then its two forwards run interleaved
(``bench_record.interleaved_times``) on the pair's own inputs, through the pair's ``candidate_call``
/ ``reference_call`` when it declares them. The ratio candidate / reference (the median of the
per-round ratios, ``bench_record.paired_ratio``) is the result: at most
1.0 means our implementation costs no more than the one it is checked against.

Where both sides run the same kernels in the same order (the mirrored ports: bit-identical outputs),
the true ratio is 1.0 and a measured one lands a few percent either side of it by the machine's
noise alone. So each ratio comes with a 95% interval for its median
(``bench_record.median_interval``), and with the work each side asked for, counted rather than timed
(``bench_work.count_work``: kernels, floating-point operations, bytes allocated). A ratio reads:

* ``<= 1``: at most 1.0;
* ``~ 1``: above 1.0, but the interval reaches 1.0: not distinguishable from equal cost;
* ``> 1``: the whole interval lies above 1.0: the candidate costs more.

It is reported, never asserted: a line per pair as it finishes, one table at the end, and
``reports/bench.json`` (section ``pairs``). Nightly pairs (full sizes) join with ``--nightly``.

Benchmarks only (``tox -e bench``): without ``--benchmark-only`` timing is off and the parity
suite already runs every one of these forwards, so the tests skip.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable

import pytest
import torch

import harness
from bench_record import interleaved_times, median_interval, paired_ratio, record, round_ratios, rounds_for, say
from bench_work import count_work

NIGHTLY = set(harness.list_pairs(tag="nightly"))
PAIRS = [pytest.param(n, marks=[pytest.mark.nightly] if n in NIGHTLY else []) for n in harness.list_pairs()]


def _call(model: torch.nn.Module, how: Callable | None, call: harness.Call) -> Callable[[], Any]:
    return lambda: how(model, call) if how is not None else call(model)


def _forward(model: torch.nn.Module, how: Callable | None, call: harness.Call) -> Callable[[], Any]:
    run = _call(model, how, call)

    def timed():
        with torch.inference_mode():
            return run()

    return timed


def _reading(ratio: float, low: float) -> str:
    """``<= 1``, ``~ 1`` (above 1.0 by no more than noise) or ``> 1``: see the module docstring."""
    return "<= 1" if ratio <= 1.0 else "~ 1" if low <= 1.0 else "> 1"


def _work(pair: harness.Pair, candidate: torch.nn.Module, reference: torch.nn.Module, call: harness.Call) -> dict:
    """Each side's counted work and the candidate / reference ratios of floating-point operations
    and bytes allocated."""
    work = {"candidate": count_work(_call(candidate, pair.candidate_call, call)).as_dict(),
            "reference": count_work(_call(reference, pair.reference_call, call)).as_dict()}
    for measure in ("flops", "allocated_bytes"):
        mine, theirs = work["candidate"][measure], work["reference"][measure]
        work[f"{measure}_ratio"] = round(mine / theirs, 4) if theirs else None
    return work


def _ratio_text(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.4f}"


@pytest.fixture(scope="module")
def table(request) -> dict[str, dict]:
    """Rows gathered by the tests of this module, printed as one table when the module ends."""
    rows: dict[str, dict] = {}
    yield rows
    if rows:
        say(request.config, [
            f"{'pair':<36} {'candidate ms':>12} {'reference ms':>12} {'ratio':>7} {'95% interval':>15} {'reads':>5}"
            f" {'flops':>7} {'alloc':>7} {'kernels':>11}"] + [
            f"{name:<36} {row['candidate_s'] * 1e3:>12.2f} {row['reference_s'] * 1e3:>12.2f} "
            f"{row['ratio']:>7.3f} {row['interval'][0]:>7.3f}-{row['interval'][1]:<7.3f} {row['reads']:>5}"
            f" {_ratio_text(row['work']['flops_ratio']):>7} {_ratio_text(row['work']['allocated_bytes_ratio']):>7}"
            f" {row['work']['candidate']['kernels']:>5}/{row['work']['reference']['kernels']:<5}"
            for name, row in sorted(rows.items())])


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
    ratio = paired_ratio(times, "candidate", "reference")
    low, high, coverage = median_interval(round_ratios(times, "candidate", "reference"))
    entry = {"candidate_s": seconds["candidate"], "reference_s": seconds["reference"],
             "ratio": round(ratio, 4), "interval": [round(low, 4), round(high, 4)],
             "interval_coverage": round(coverage, 4), "reads": _reading(ratio, low), "rounds": rounds,
             "work": _work(pair, candidate, reference, call)}
    benchmark.extra_info.update(entry)
    record("pairs", name, entry)
    table[name] = entry
    say(request.config, [f"{name}: candidate/reference forward {entry['ratio']:.3f} ({entry['reads']}; "
                          f"95% interval {entry['interval'][0]:.3f}-{entry['interval'][1]:.3f}; {seconds['candidate'] * 1e3:.2f} ms / "
                          f"{seconds['reference'] * 1e3:.2f} ms, {rounds} rounds; flops "
                          f"{_ratio_text(entry['work']['flops_ratio'])}, bytes allocated "
                          f"{_ratio_text(entry['work']['allocated_bytes_ratio'])})"])
