"""The porting engineer's commands: models given as specs, weights mapped by inference.

    python -m harness map CANDIDATE REFERENCE [--input-shape 1x3x224x224] [--save-map F] [--json]
    python -m harness compare --candidate SPEC --reference SPEC [--input-shape ...] [--dtype ...]
                              [--save-map F | --map F] [--json PATH]
    python -m harness compare --candidate SPEC --reference-trace FILE [--map F] [--dtype ...]

A SPEC is ``path/to/file.py:function`` or ``package.module:function`` (:mod:`harness.specs`). Both
models are built by the command, put in eval mode and cast to ``--dtype``; the input is seeded
random data of ``--input-shape`` (repeated for several positional arguments). ``compare`` infers the weight map (or reads
``--map``), copies the reference's weights into the candidate through it, and compares.

Against a recorded reference (``--reference-trace``) only the candidate is built; it runs on the
recorded inputs. Its weights come from the trace when the trace stores them: through ``--map``
(made where the reference runs: inferring a map runs both models), or by name when the
candidate's tensors are named as the stored ones. Otherwise the candidate keeps the weights its
function gave it, which must be the recorded ones (the trace's weights fingerprint).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # torch is imported when a command runs, not when the parser is built
    import torch
    from torch import nn

__all__ = ["add_map_arguments", "run_map", "add_port_arguments", "run_port_compare", "run_trace_compare"]


def _build(args: argparse.Namespace, dtype: "torch.dtype") -> tuple["nn.Module", "nn.Module", tuple]:
    from harness.specs import load_spec, random_inputs

    candidate = load_spec(args.candidate, option="--candidate").to(dtype).eval()
    reference = load_spec(args.reference, option="--reference").to(dtype).eval()
    if args.randomize:
        _redraw(reference, args.seed or 0)
    return candidate, reference, random_inputs(args.input_shape, dtype, seed=args.seed or 0)


_RANDOMIZE = ("re-draw the reference's weights at random (harness.randomize_, seeded by --seed) before the map is "
              "made: a model at its initialization may hold a branch's last norm at zero (timm's zero_init_last), "
              "which hides every error in that branch")


def _redraw(reference: "nn.Module", seed: int) -> None:
    import torch

    from harness.pairs import randomize_

    randomize_(reference, torch.Generator().manual_seed(seed))
    print(f"reference: weights re-drawn at random (seed {seed})", file=sys.stderr)


def _add_output_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    for side in ("candidate", "reference"):
        p.add_argument(f"--{side}-output", metavar="NAME",
                       help=f"{prefix}compare this field of the {side}'s output (a ModelOutput attribute such as "
                            f"pooler_output, a dict key, or a tuple index), not all of its tensors")


def _outputs(args: argparse.Namespace) -> dict[str, Any]:
    """``candidate_outputs``/``reference_outputs`` picking the fields named on the command line."""
    return {f"{side}_outputs": _field(name, f"--{side}-output") for side in ("candidate", "reference")
            if (name := getattr(args, f"{side}_output", None)) is not None}


def _field(name: str, option: str) -> Callable[[Any], Any]:
    def pick(output: Any) -> Any:
        if isinstance(output, Mapping) and name in output:
            return output[name]
        if isinstance(output, (tuple, list)) and name.lstrip("-").isdigit() and -len(output) <= int(name) < len(output):
            return output[int(name)]
        if not isinstance(output, (tuple, list, Mapping)) and hasattr(output, name):
            return getattr(output, name)
        fields = list(output.keys()) if isinstance(output, Mapping) else (
            f"indices 0-{len(output) - 1}" if isinstance(output, (tuple, list)) else type(output).__name__)
        raise ValueError(f"{option} {name!r}: the model's output has no such field (it has {fields}); "
                         f"give one of its fields")
    return pick


def _common(p: argparse.ArgumentParser) -> None:
    from harness.cli import DTYPES

    p.add_argument("--input-shape", action="append", default=None,
                   help="shape of a seeded random input (default 1x3x224x224; repeat for several inputs); "
                        "1x16:int1000 for token ids, 1x16:bool for a mask, 1x16:ones")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    p.add_argument("--randomize", action="store_true", help=_RANDOMIZE)


def add_map_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("candidate", help="candidate model spec: path/to/file.py:function or package.module:function")
    p.add_argument("reference", help="reference model spec, as the candidate")
    _common(p)
    p.add_argument("--save-map", metavar="FILE", help="write the table as JSON (reuse it with compare --map)")
    p.add_argument("--json", action="store_true", help="print the table as JSON instead of text")
    p.add_argument("--no-verify", action="store_true", help="skip running both models to verify the map")
    _add_output_arguments(p)


def run_map(args: argparse.Namespace) -> int:
    from harness.cli import DTYPES, print_json
    from harness.weights import map_weights

    from harness.files import check_target

    if args.save_map:
        check_target(args.save_map)  # before the models are built and mapped
    args.input_shape = args.input_shape or ["1x3x224x224"]
    candidate, reference, inputs = _build(args, DTYPES[args.dtype])
    weights = map_weights(candidate, reference, inputs, verify=not args.no_verify, **_outputs(args))
    if args.json:
        print_json(weights.to_dict())
    else:
        print(weights)
    if args.save_map:
        print(f"weight map written to {weights.save(args.save_map)}", file=sys.stderr if args.json else sys.stdout)
    return 0


def add_port_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``compare`` for two models given as specs (no registered pair)."""
    p.add_argument("--candidate", metavar="SPEC", help="your model: path/to/file.py:function or package.module:function")
    p.add_argument("--reference", metavar="SPEC", help="the original model, as --candidate")
    p.add_argument("--input-shape", action="append", default=None,
                   help="with --candidate: shape of a seeded random input (default 1x3x224x224; repeat for several "
                        "inputs); 1x16:int1000 for token ids, 1x16:bool for a mask, 1x16:ones")
    p.add_argument("--seed", type=int, default=None, help="with --candidate: seed of the random input (default 0)")
    p.add_argument("--randomize", action="store_true", help=f"with --candidate: {_RANDOMIZE}")
    p.add_argument("--map", metavar="FILE", help="with --candidate: use this weight map instead of inferring one "
                                                 "(with --reference-trace: transfer the trace's weights through it)")
    p.add_argument("--save-map", metavar="FILE", help="with --candidate: write the inferred weight map here")
    _add_output_arguments(p, prefix="with --candidate: ")


def run_port_compare(args: argparse.Namespace, report_options: dict[str, Any],
                     finish: Callable[[Any], int]) -> int:
    """``compare --candidate SPEC --reference SPEC``: infer or read the map, transfer, compare."""
    from harness.api import compare
    from harness.cli import DTYPES
    from harness.weights import load_weight_map, map_weights

    if getattr(args, "pair", None):
        raise ValueError(f"give either a registered pair ({args.pair!r}) or --candidate/--reference, not both")
    if not args.reference:
        raise ValueError("--candidate needs --reference SPEC: the model to compare against")
    if not args.candidate:
        raise ValueError("--reference needs --candidate SPEC: the model to compare (your port)")
    if args.map and args.save_map:
        raise ValueError("--map reads a weight map and --save-map writes an inferred one; give one of them")
    args.input_shape = args.input_shape or ["1x3x224x224"]
    dtype = DTYPES[args.dtype]
    candidate, reference, inputs = _build(args, dtype)
    outputs = _outputs(args)
    weights = load_weight_map(args.map) if args.map else map_weights(candidate, reference, inputs, **outputs)
    if args.save_map:
        print(f"weight map written to {weights.save(args.save_map)}")
    weights.transfer(reference, candidate)
    print(_transferred(weights, candidate))
    report = compare(candidate, reference, inputs, weights=weights, dtype=dtype, **outputs, **report_options)
    return finish(report)


def _transferred(weights: Any, candidate: "nn.Module", source: str = "") -> str:
    """The line saying what a transfer filled: coverage of this candidate's parameters, which a map
    made for another model (a deeper one sharing its first names) covers only in part."""
    from harness.metrics import percent

    fitted = weights.fitted(candidate)[0]
    return (f"weights: {len(weights.entries)} tensors transferred{source}, coverage {percent(fitted.coverage)}"
            + "".join(f"; {len(v)} unmatched {k}" for k, v in fitted.unmatched.items() if v))


def run_trace_compare(args: argparse.Namespace, report_options: dict[str, Any],
                      finish: Callable[[Any], int]) -> int:
    """``compare --candidate SPEC --reference-trace FILE``: build the candidate, give it the recorded
    model's weights, compare it with the recorded reference on the recorded inputs."""
    from harness.api import compare
    from harness.cli import DTYPES, _device
    from harness.specs import load_spec
    from harness.tracefile import load_trace
    from harness.weights import load_weight_map

    _check_trace_usage(args)
    dtype, device = DTYPES[args.dtype], _device(args.device)
    trace = load_trace(args.reference_trace)
    if trace.dtype != dtype:
        raise ValueError(f"trace {trace.path} was recorded in {trace.meta['dtype']}, the comparison asks for "
                         f"{args.dtype}: compare with --dtype {trace.meta['dtype']} or record it again with "
                         f"--dtype {args.dtype}")
    weights = load_weight_map(args.map) if args.map else None
    candidate = load_spec(args.candidate, option="--candidate").to(device=device, dtype=dtype).eval()
    print(_recorded_weights(candidate, trace, weights, args))
    report = compare(candidate, trace, weights=weights, dtype=dtype, **_outputs(args), **report_options)
    return finish(report)


def _check_trace_usage(args: argparse.Namespace) -> None:
    """One line for each option that cannot apply against a recorded reference, saying what does."""
    if getattr(args, "pair", None):
        raise ValueError(f"give either a registered pair ({args.pair!r}) or --candidate, not both")
    if args.reference:
        raise ValueError("--reference SPEC and --reference-trace FILE both give the reference; give one of them")
    given = [flag for flag, value in (("--input-shape", args.input_shape), ("--seed", args.seed),
                                      ("--randomize", args.randomize or None)) if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: the candidate runs on the inputs and weights recorded in the trace; "
                         f"drop {'them' if len(given) > 1 else 'it'} (choose the inputs and weights when recording)")
    if args.save_map:
        raise ValueError("--save-map writes an inferred map, and inferring one runs both models: make it where the "
                         "reference runs (python -m harness map CANDIDATE REFERENCE --save-map FILE) and give it "
                         "with --map FILE")
    if args.reference_output is not None:
        raise ValueError("--reference-output picks a field of the reference's output as it runs; a trace holds the "
                         "outputs as recorded: pick the candidate's matching field with --candidate-output")


def _recorded_weights(candidate: "nn.Module", trace: Any, weights: Any, args: argparse.Namespace) -> str:
    """Give ``candidate`` the weights recorded in ``trace`` (through the map ``weights``, else by
    name), or check that its own are those; the line saying which."""
    from harness.tracefile import RecordedModel, check_fingerprint

    stored = trace.weights()
    if weights is not None:
        if stored is None:
            raise ValueError(f"--map transfers the weights stored in trace {trace.path}, which was recorded without "
                             f"them: record it again with --weights, or drop --map when {args.candidate} builds "
                             f"the model with the converted weights")
        weights.transfer(RecordedModel(trace, weights=True), candidate)
        return _transferred(weights, candidate, f" from trace {trace.path}")
    own = candidate.state_dict()
    misfits = [] if stored is None else [k for k in own if k not in stored or stored[k].shape != own[k].shape]
    if stored is not None and not misfits and own.keys() == stored.keys():
        candidate.load_state_dict(stored)
        return f"weights: {len(stored)} tensors loaded from trace {trace.path} (the candidate names them alike)"
    try:
        account = check_fingerprint(trace.fingerprint, candidate, source=str(trace.path))
    except ValueError as exc:
        if stored is None:
            raise ValueError(f"{exc}; from the command line: let {args.candidate} build the model with the converted "
                             f"weights, or record the trace again with --weights and give --map FILE") from None
        differ = (f"{_shown(misfits)} are not among the weights trace {trace.path} stores (by name and shape)"
                  if misfits else f"trace {trace.path} stores {_shown(sorted(stored.keys() - own.keys()))}, which the "
                                  f"candidate does not have")
        raise ValueError(f"--candidate {args.candidate}: {differ}, and the candidate's own weights are not the recorded "
                         f"ones: give --map FILE to transfer the stored weights (make the map where the reference "
                         f"runs: python -m harness map {args.candidate} REFERENCE --save-map FILE)") from None
    return f"weights: the candidate's own; {account}"


def _shown(keys: list[str], most: int = 3) -> str:
    return ", ".join(keys[:most]) + (f" ... (+{len(keys) - most})" if len(keys) > most else "")
