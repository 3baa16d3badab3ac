"""Tracer overhead on ConvNeXt-T and ViT-S at 1x3x224x224, float32: traced / plain forward.

Five variants run interleaved in one benchmark per model (``bench_record.interleaved_times``):

- ``plain``: the forward alone;
- ``floor_reduce``: the forward with a hook on every module taking one sum of each output (the
  least a summary must read);
- ``floor_copy``: the forward with a hook on every module cloning each output tensor once (the
  least a full trace must write);
- ``summary`` / ``full``: the forward under :class:`harness.Tracer` in that mode.

The ratios to ``plain`` (medians of per-round ratios, each with a distribution-free 95% interval
for its median) and the overhead above each mode's floor go to ``benchmark.extra_info``
and ``reports/bench.json`` (section ``tracer``). Speed is reported, never asserted; what is asserted
is that both tracing modes recorded the same calls.
Benchmarks only (``tox -e bench``); in the default suite each variant runs once as a smoke test.

Memory: the peak resident size of a float64 comparison of ConvNeXt-L and -XL at 224 with their
traces in memory (and of -XL with the default automatic spill, and with every large copy in files)
against a plain forward of the larger model, each measured from
a reset high-water mark in a child process (``tests/bench_memory.py``); section ``memory`` of ``reports/bench.json``. The default suite
runs the child once on a one-block pair.

The helpers the benchmarks lean on are specified at the end: the interval a pair's ratio is read
with (``bench_record.median_interval``) and the counted work beside it (``bench_work.count_work``).

CLI start-up: wall seconds of ``python -m harness list``, ``inspect`` (a ConvNeXt-T checkpoint),
``compat`` and ``report render`` beside the interpreter alone and ``import torch``, which none of
them needs; section ``cli``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

import harness
from bench_record import interleaved_times, median_interval, paired_ratio, record, round_ratios, rounds_for, say
from bench_work import count_work
from harness import Tracer

MODELS = {"convnext_tiny": "convnext_tiny", "vit_small": "rope_mixed_vit_small"}  # model -> pair whose candidate it is
IMAGE = (1, 3, 224, 224)


def _hooked(model: nn.Module, x: torch.Tensor, keep: Callable[[torch.Tensor], object]) -> Callable[[], int]:
    """The forward with a hook on every module applying ``keep`` once to each output tensor."""
    def run() -> int:
        kept: dict[int, tuple[weakref.ref, object]] = {}

        def hook(module, args, output):
            for t in harness.trace.flatten_tensors(output).values():
                seen = kept.get(id(t))
                if seen is None or seen[0]() is not t:  # an id is reused once its tensor is freed
                    kept[id(t)] = (weakref.ref(t), keep(t))

        handles = [m.register_forward_hook(hook) for m in model.modules()]
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
        return len(kept)

    return run


def _traced(model: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], int]:
    def run() -> int:
        with torch.no_grad(), Tracer(model, mode=mode) as tracer:
            model(x)
        return len(tracer)

    return run


def _variants(model: nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    def plain():
        with torch.no_grad():
            return model(x)

    return {
        "plain": plain,
        "floor_reduce": _hooked(model, x, lambda t: t.sum()),
        "floor_copy": _hooked(model, x, lambda t: t.detach().clone()),
        "summary": _traced(model, x, "summary"),
        "full": _traced(model, x, "full"),
    }


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(IMAGE, generator=torch.Generator().manual_seed(0))


@pytest.mark.bench
@pytest.mark.parametrize("model_name", list(MODELS))
def test_bench_tracer_overhead(benchmark, request, image, model_name: str) -> None:
    model, _ = harness.get_pair(MODELS[model_name]).build(dtype=torch.float32)
    variants = _variants(model, image)
    calls = {mode: variants[mode]() for mode in ("summary", "full")}
    assert calls["summary"] == calls["full"] > 0, f"{model_name}: the two modes recorded different calls: {calls}"
    if benchmark.disabled:  # default suite: one run of each variant as a smoke test
        for fn in variants.values():
            fn()
        return
    rounds = rounds_for(list(variants.values()), budget_s=20.0)
    times: dict[str, list[float]] = {}
    benchmark.group = "tracer overhead, 1x3x224x224 float32"
    benchmark.pedantic(lambda: times.update(interleaved_times(variants, rounds=rounds)), rounds=1, iterations=1)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    ratio = {name: paired_ratio(times, name, "plain") for name in times}
    intervals = {name: median_interval(round_ratios(times, name, "plain")) for name in times if name != "plain"}
    entry = {
        "image": list(IMAGE), "rounds": rounds, "seconds": {k: round(v, 5) for k, v in seconds.items()},
        "ratio": {k: round(v, 3) for k, v in ratio.items()},
        "interval": {k: [round(low, 3), round(high, 3)] for k, (low, high, _) in intervals.items()},
        "interval_coverage": round(min(c for _, _, c in intervals.values()), 3),
        "summary_above_floor": round(ratio["summary"] - ratio["floor_reduce"], 3),
        "full_above_floor": round(ratio["full"] - ratio["floor_copy"], 3),
    }
    benchmark.extra_info.update(entry)
    record("tracer", model_name, entry)
    say(request.config, [f"tracer {model_name}: " + ", ".join(
        f"{k} {v:.2f}x" + (f" [{intervals[k][0]:.2f}-{intervals[k][1]:.2f}]" if k in intervals else "") for k, v in ratio.items())
          + f"; above floor: summary {entry['summary_above_floor']:+.2f}, full {entry['full_above_floor']:+.2f}"])


# float64 weights of one model (the two share them): 1.5 GiB for Large, 2.6 GiB for XLarge
# (pair, input shape, where the traces' large copies go: memory, auto (the default), all to files)
MEMORY_BENCH = [("convnext_large", "1x3x224x224", "memory"), ("convnext_xlarge", "1x3x224x224", "memory"),
                ("convnext_xlarge", "1x3x224x224", "auto"), ("convnext_xlarge", "1x3x224x224", "all")]
MEMORY_SMOKE = [("convnext_tiny_stage3_block", None, "all")]
SPILL_KEYS = {"memory": "", "auto": "_auto", "all": "_spill"}  # reports/bench.json "memory" entries
SPILL_WORDS = {"memory": "in memory", "auto": "auto spill", "all": "spilled"}


def _peak_memory(pair: str, shape: str | None, spill: str) -> dict:
    script = Path(__file__).resolve().parents[1] / "bench_memory.py"
    command = [sys.executable, str(script), pair, *(["--shape", shape] if shape else []), "--spill", spill]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.bench
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak memory is reset through Linux's /proc")
@pytest.mark.parametrize("index", range(len(MEMORY_BENCH)))
def test_bench_comparison_peak_memory(benchmark, request, index: int) -> None:
    if benchmark.disabled and index >= len(MEMORY_SMOKE):
        pytest.skip("the default suite runs one smoke measurement")
    pair, shape, spill = (MEMORY_SMOKE if benchmark.disabled else MEMORY_BENCH)[index]
    result: dict = {}
    if benchmark.disabled:
        result = _peak_memory(pair, shape, spill)
    else:
        benchmark.group = "peak memory, float64 comparison (seconds: the child process)"
        benchmark.pedantic(lambda: result.update(_peak_memory(pair, shape, spill)), rounds=1, iterations=1)
    assert result["passed"], f"the comparison measured failed: {result}"
    assert result["compare"]["peak_gib"] >= result["compare"]["start_gib"] > 0, result
    if benchmark.disabled:
        return
    benchmark.extra_info.update(result)
    record("memory", pair + SPILL_KEYS[spill], result)
    say(request.config, [f"memory {pair} {result['shape']} float64 {SPILL_WORDS[spill]}: comparison peak {result['compare']['peak_gib']:.2f} GiB "
                         f"({result['compare']['peak_above_start_gib']:.2f} above the models), plain forward "
                         f"{result['forward']['peak_gib']:.2f} GiB ({result['forward']['peak_above_start_gib']:.2f} above)"])


# ------------------------------------------------------------------------------ CLI start-up
def _cli_inputs(folder: Path, *, full_size: bool) -> dict[str, list[str]]:
    """The files the timed commands read: a ConvNeXt and a RoPE-ViT checkpoint, a report folder."""
    from candidates.convnext import ConvNeXt, ConvNeXtConfig, convnext_tiny
    from candidates.io import save_state_dict
    from candidates.rope_vit import rope_mixed_vit
    from harness.report import document
    from report_toys import toy_results

    convnext = convnext_tiny() if full_size else ConvNeXt(ConvNeXtConfig(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)))
    vit = rope_mixed_vit("small", **({} if full_size else {"embed_dim": 32, "num_heads": 2, "depth": 1}))
    checkpoint = save_state_dict(convnext.state_dict(), folder / "convnext.pth", wrap="model")
    vit_checkpoint = save_state_dict(vit.state_dict(), folder / "rope_vit.safetensors")
    reports = folder / "reports"
    reports.mkdir()
    (reports / "parity.json").write_text(json.dumps(document(
        [dict(r, test=f"t{i}") for i, r in enumerate(toy_results())])))
    return {"inspect": ["inspect", str(checkpoint)], "compat": ["compat", str(checkpoint), str(vit_checkpoint)],
            "report_render": ["report", "render", str(reports)]}


def _cli_variants(folder: Path, *, full_size: bool) -> dict[str, list[str]]:
    """Each command line timed: the interpreter alone and ``import torch`` frame the CLI commands."""
    python = sys.executable
    commands = {"list": ["list"], **_cli_inputs(folder, full_size=full_size)}
    return {"python": [python, "-c", "pass"], "import_torch": [python, "-c", "import torch"],
            **{name: [python, "-m", "harness", *args] for name, args in commands.items()}}


def _wall_seconds(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    # compat exits 1 for an incompatible pair; the timed pair is compatible, so anything but 0 is a failure
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}"
    return seconds, done.stdout


@pytest.mark.bench
def test_bench_cli_startup(benchmark, request, tmp_path) -> None:
    variants = _cli_variants(tmp_path, full_size=not benchmark.disabled)
    outputs = {name: _wall_seconds(command)[1] for name, command in variants.items()}  # also the warm-up
    assert "convnext_tiny" in outputs["list"] and "family:     convnext" in outputs["inspect"], outputs
    assert "| Yes |" in outputs["compat"] and "rendered" in outputs["report_render"], outputs
    if benchmark.disabled:
        return
    rounds = 5
    times: dict[str, list[float]] = {name: [] for name in variants}

    def run() -> None:
        for i in range(rounds):
            for name, command in (variants.items() if i % 2 == 0 else reversed(variants.items())):
                times[name].append(_wall_seconds(command)[0])

    benchmark.group = "CLI start-up (wall seconds of the whole process)"
    benchmark.pedantic(run, rounds=1, iterations=1)
    seconds = {name: round(statistics.median(values), 3) for name, values in times.items()}
    commands = [name for name in variants if name not in ("python", "import_torch")]
    entry = {"rounds": rounds, "timer": "wall seconds of each process, medians over interleaved rounds",
             "inputs": "convnext_tiny checkpoint (torch.save zip, wrapped in {'model': ...}), "
                       "rope_mixed_vit_small (safetensors), a two-result report folder",
             "seconds": seconds,
             "ratio_to_import_torch": {k: round(paired_ratio(times, k, "import_torch"), 3) for k in commands}}
    benchmark.extra_info.update(entry)
    record("cli", "startup", entry)
    say(request.config,
        ["CLI start-up (wall, median of 5): " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items())])


# ------------------------------------------------------------------------------ helpers
def test_median_interval_takes_the_ranks_whose_coverage_reaches_95_percent() -> None:
    # nine draws: the 2nd smallest to the 2nd largest cover the median with P = 1 - 2 * 10/512
    assert median_interval([float(v) for v in range(9, 0, -1)]) == (2.0, 8.0, pytest.approx(0.9609375))


def test_median_interval_of_too_few_draws_is_the_range_with_its_lower_coverage() -> None:
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0, 0.75)


def test_median_interval_covers_the_median_at_its_stated_rate() -> None:
    generator = torch.Generator().manual_seed(0)
    draws = torch.randn(4000, 15, generator=generator)
    intervals = [median_interval(row.tolist()) for row in draws]
    covered = sum(low <= 0.0 <= high for low, high, _ in intervals) / len(intervals)
    stated = intervals[0][2]
    # 4000 trials: the binomial standard error of the rate is under 0.004
    assert abs(covered - stated) < 0.015, f"covered {covered:.4f} of 4000 medians, stated {stated:.4f}"


def test_count_work_counts_a_linear_layers_multiply_adds_and_its_output() -> None:
    layer = nn.Linear(8, 16)
    x = torch.randn(4, 8)
    work = count_work(lambda: layer(x))
    assert (work.kernels, work.flops, work.allocated_bytes) == (1, 2 * 4 * 8 * 16, 4 * 16 * 4), work


def test_count_work_counts_a_linear_layer_on_tokens_as_one_kernel() -> None:
    # (B, T, C) -> flattened to 2-D, one addmm, and a re-described result that moves no data
    layer, tokens = nn.Linear(8, 16), torch.randn(2, 3, 8)
    work = count_work(lambda: layer(tokens))
    assert (work.kernels, work.allocated_bytes) == (1, 2 * 3 * 16 * 4), work


def test_count_work_charges_nothing_for_views() -> None:
    x = torch.randn(4, 8)
    work = count_work(lambda: x.view(8, 4).transpose(0, 1)[1:].unsqueeze(0))
    assert work.as_dict() == {"kernels": 0, "flops": 0, "allocated_bytes": 0}, work


def test_count_work_charges_an_in_place_call_a_kernel_but_no_allocation() -> None:
    x = torch.randn(4, 8)
    assert count_work(lambda: x.mul_(2.0)).as_dict() == {"kernels": 1, "flops": 0, "allocated_bytes": 0}
