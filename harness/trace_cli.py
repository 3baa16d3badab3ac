"""``python -m harness record`` and ``compare PAIR --reference-trace``: trace files from the command line.

``record MODEL --out FILE`` runs one model and writes its trace (:mod:`harness.tracefile`).
MODEL is a registered pair side (``convnext_tiny:reference``, or ``convnext_tiny --side
reference``), ``file.py:function`` or ``package.module:function`` returning an ``nn.Module``;
for the latter two, ``--input-shape`` gives seeded random inputs.

``compare PAIR --reference-trace FILE`` builds the pair's candidate (from the weights stored in
the trace when there are any, so the reference library is never asked to build a model) and
compares it with the recorded reference. A port of one's own, ``compare --candidate SPEC
--reference-trace FILE``, is compared by :func:`harness.port_cli.run_trace_compare`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch

from harness.cli import DTYPES, register_command

__all__ = ["compare_pair_trace"]


def _pair_side(model: str, side: str | None) -> tuple[str, str] | None:
    """(pair, side) when ``model`` names a registered pair (``NAME`` or ``NAME:SIDE``), else None."""
    from harness.pairs import list_pairs

    name, sep, given = model.rpartition(":") if ":" in model else (model, "", "")
    if sep and given not in ("reference", "candidate"):
        return None
    if name not in list_pairs():
        if sep or model.endswith(".py"):
            raise ValueError(f"{model!r}: no registered pair named {name!r} (python -m harness list shows them)")
        raise ValueError(f"{model!r} is neither a registered pair nor a file.py:function / package.module:function spec")
    if sep and side and side != given:
        raise ValueError(f"{model!r} names the {given} side but --side {side} was given; use one of them")
    return name, given or side or "reference"


def _run_record(args: argparse.Namespace) -> int:
    from harness.cli import _device
    from harness.specs import load_spec, random_inputs
    from harness.tracefile import record, record_pair

    dtype, device = DTYPES[args.dtype], _device(args.device)
    out = Path(args.out)
    started = time.perf_counter()
    inputs = random_inputs(args.input_shape or [], dtype, seed=args.seed, device=device) or None
    pair_side = _pair_side(args.model, args.side)
    options = dict(include=args.include, precision=args.precision)
    if pair_side is not None:
        pair, side = pair_side
        record_pair(pair, side, out, dtype=dtype, device=device, inputs=inputs,
                    weights=True if args.weights is None else args.weights, **options)
    else:
        if args.side:
            raise ValueError(f"--side applies to registered pairs; {args.model!r} is a model spec")
        if inputs is None:
            raise ValueError(f"recording {args.model!r} needs --input-shape (e.g. --input-shape 1,3,224,224)")
        model = load_spec(args.model)
        model = model.to(device=device, dtype=dtype).eval()
        record(model, inputs, out, weights=bool(args.weights), source=args.model, **options)
    size = os.path.getsize(out)
    print(f"trace written to {out} ({size / 1e6:.1f} MB, {time.perf_counter() - started:.1f} s)")
    return 0


def _record_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="PAIR, PAIR:SIDE (convnext_tiny:reference), file.py:function or package.module:function")
    p.add_argument("--side", choices=("reference", "candidate"), help="side of a registered pair (default reference)")
    p.add_argument("--out", required=True, metavar="FILE", help="the trace file to write")
    p.add_argument("--input-shape", action="append", metavar="SHAPE",
                   help="shape of a seeded random input, e.g. 1,3,224,224 (repeat for more positional inputs; "
                        "1,16:int1000 for token ids, 1,16:bool for a mask); pairs default to their own inputs")
    p.add_argument("--seed", type=int, default=0, help="seed of the --input-shape inputs (default 0)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--include", metavar="REGEX",
                   help="keep full tensors only for modules whose name matches (others: statistics)")
    p.add_argument("--precision", choices=("float32", "float16", "bfloat16"),
                   help="store floating tensors in this precision (its rounding error is stated in reports)")
    p.add_argument("--weights", action=argparse.BooleanOptionalAction, default=None,
                   help="store the weights, so a candidate can be built from the file alone (default: on for pairs)")


register_command("record", help="run one model and write its trace file (for compare --reference-trace)",
                 add_arguments=_record_arguments, run=_run_record)


def compare_pair_trace(
    pair: Any,
    trace: Any,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    **overrides: Any,
):
    """Compare a registered pair's candidate with a recorded reference (a path or a loaded trace).

    The candidate gets the pair's converted weights: from the trace when it stores them (the
    reference is then never built), otherwise from ``pair.build``.
    """
    from harness.api import compare
    from harness.pairs import _load_candidate, as_pair
    from harness.tracefile import Trace, load_trace

    pair = as_pair(pair)
    trace = trace if isinstance(trace, Trace) else load_trace(trace)
    if trace.dtype != dtype:
        raise ValueError(f"trace {trace.path} was recorded in {trace.meta['dtype']}, the comparison asks for "
                         f"{str(dtype).removeprefix('torch.')}: record it again with --dtype "
                         f"{str(dtype).removeprefix('torch.')} or compare with --dtype {trace.meta['dtype']}")
    weights = trace.weights()
    if weights is not None and trace.source == f"{pair.name}:reference":
        state = pair.convert({k: v.clone() for k, v in weights.items()})
        candidate = _load_candidate(pair.candidate, state, seed=pair.seed).to(device=device, dtype=dtype).eval()
    else:
        candidate, _ = pair.build(dtype=dtype, device=device, share_weights=True)
    options = pair.options.replace(**overrides)
    return compare(candidate, trace, None, dtype=dtype, pair_name=pair.name, **options.to_kwargs())
