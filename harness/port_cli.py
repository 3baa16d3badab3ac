"""The porting engineer's commands: models given as specs, weights mapped by inference.

    python -m harness map CANDIDATE REFERENCE [--input-shape 1x3x224x224] [--save-map F] [--json]
    python -m harness compare --candidate SPEC --reference SPEC [--input-shape ...] [--dtype ...]
                              [--save-map F | --map F] [--json PATH]

A SPEC is ``path/to/file.py:function`` or ``package.module:function`` (:mod:`harness.specs`). Both
models are built by the command, put in eval mode and cast to ``--dtype``; the input is seeded
random data of ``--input-shape`` (repeated for several positional arguments). ``compare`` infers the weight map (or reads
``--map``), copies the reference's weights into the candidate through it, and compares.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # torch is imported when a command runs, not when the parser is built
    import torch
    from torch import nn

__all__ = ["add_map_arguments", "run_map", "add_port_arguments", "run_port_compare"]


def _build(args: argparse.Namespace, dtype: "torch.dtype") -> tuple["nn.Module", "nn.Module", tuple]:
    from harness.specs import load_spec, random_inputs

    candidate = load_spec(args.candidate, option="--candidate").to(dtype).eval()
    reference = load_spec(args.reference, option="--reference").to(dtype).eval()
    return candidate, reference, random_inputs(args.input_shape, dtype, seed=args.seed or 0)


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
                   help="shape of a seeded random input (default 1x3x224x224; repeat for several inputs)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")


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
                   help="with --candidate: shape of a seeded random input (default 1x3x224x224; repeat for several inputs)")
    p.add_argument("--seed", type=int, default=None, help="with --candidate: seed of the random input (default 0)")
    p.add_argument("--map", metavar="FILE", help="with --candidate: use this weight map instead of inferring one")
    p.add_argument("--save-map", metavar="FILE", help="with --candidate: write the inferred weight map here")
    _add_output_arguments(p, prefix="with --candidate: ")


def run_port_compare(args: argparse.Namespace, report_options: dict[str, Any],
                     finish: Callable[[Any], int]) -> int:
    """``compare --candidate SPEC --reference SPEC``: infer or read the map, transfer, compare."""
    from harness.api import compare
    from harness.cli import DTYPES
    from harness.weights import load_weight_map, map_weights
    from harness.metrics import percent

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
    print(f"weights: {len(weights.entries)} tensors transferred, coverage {percent(weights.coverage)}"
          + "".join(f"; {len(v)} unmatched {k}" for k, v in weights.unmatched.items() if v))
    report = compare(candidate, reference, inputs, weights=weights, dtype=dtype, **outputs, **report_options)
    return finish(report)
