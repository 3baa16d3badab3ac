"""Peak memory of a comparison against a plain forward of the larger model, measured in a child process.

``python tests/bench_memory.py PAIR [--shape 1x3x224x224] [--dtype float64]`` builds the pair,
then measures, each from a reset high-water mark (``/proc/self/clear_refs`` 5 resets the peak
resident set size, ``ru_maxrss``; Linux only):

- ``forward``: a plain ``torch.no_grad()`` forward of the model with more parameters;
- ``compare``: ``harness.compare`` of the two models on the same inputs (``--spill``: where its
  traces keep their large copies: ``memory``, ``auto`` as by default, ``all`` in files).

Each is reported as the peak above the resident size before it started (both models' weights
are resident in both, shared where the conversion allows, as ``compare_pair`` builds them), and
as the absolute peak. One JSON object goes to stdout. A child process keeps the parent's
allocations (the test session's) out of the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

PEAK_RESET = Path("/proc/self/clear_refs")


def _rss() -> int:
    """Current resident set size in bytes (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmRSS line")


def _peak() -> int:
    """Peak resident set size in bytes since the last reset (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _unique_bytes(*models: Any) -> int:
    """Bytes of the models' parameters and buffers, memory the two share counted once."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for m in models for t in (*m.parameters(), *m.buffers())}
    return sum(storages.values())


def measure(fn: Callable[[], Any]) -> dict[str, float]:
    """Run ``fn`` from a reset high-water mark: its peak above the resident size before it, and seconds."""
    gc.collect()
    PEAK_RESET.write_text("5")
    before = _rss()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = _peak()
    del result
    return {"peak_above_start_gib": round((peak - before) / 2**30, 3), "peak_gib": round(peak / 2**30, 3),
            "start_gib": round(before / 2**30, 3), "seconds": round(seconds, 2)}


SPILL = {"memory": False, "auto": "auto", "all": True}  # --spill: compare()'s spill


def main(argv: list[str]) -> dict[str, Any]:
    import torch

    from harness.api import compare
    from harness.metrics import dtype_name
    from harness.pairs import as_call, get_pair
    from harness.specs import parse_shape

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pair")
    parser.add_argument("--shape", type=parse_shape, default=None, help="input shape (default: the pair's inputs)")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--spill", choices=sorted(SPILL), default="auto",
                        help="where the comparison keeps its traces' large copies: memory, files in the temp "
                             "folder beyond the first 256 MiB per trace (auto, the default), files (all)")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    pair = get_pair(args.pair)
    candidate, reference = pair.build(dtype=dtype, share_weights=True)  # as compare_pair builds them
    call = pair.inputs(dtype=dtype) if args.shape is None else as_call(
        torch.randn(args.shape, generator=torch.Generator().manual_seed(0), dtype=dtype))
    larger = max((candidate, reference), key=lambda m: sum(p.numel() for p in m.parameters()))

    def forward() -> Any:
        with torch.no_grad():
            return call.clone()(larger)

    report: list[Any] = []

    def comparison() -> None:
        report.append(compare(candidate, reference, call, dtype=dtype, pair_name=pair.name,
                              **pair.compare_options(), spill=SPILL[args.spill]))

    result = {"pair": pair.name, "dtype": dtype_name(dtype), "spill": args.spill, "shape": list(call.args[0].shape) if call.args else None,
              "weights_gib": round(_unique_bytes(candidate, reference) / 2**30, 3),
              "forward": measure(forward), "compare": measure(comparison)}
    result["passed"] = report[0].passed
    # what the comparison adds over the models, in units of what a plain forward adds; and the peaks
    result["ratio"] = round(result["compare"]["peak_above_start_gib"]
                            / max(result["forward"]["peak_above_start_gib"], 1e-9), 2)
    result["peak_ratio"] = round(result["compare"]["peak_gib"] / result["forward"]["peak_gib"], 3)
    return result


if __name__ == "__main__":
    # run as a script, this file's folder leads sys.path, and tests/harness would shadow the package
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    print(json.dumps(main(sys.argv[1:])))
