"""Command line: ``python -m harness list | compare PAIR | <registered commands>``.

Families add their own subcommands (checkpoint inspection, metadata repair...) with
:func:`register_command` from the modules that define their pairs; the harness stays model-free.
Exit codes: 0 success / parity, 1 parity failure, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

__all__ = ["register_command", "main"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


_COMMANDS: dict[str, Command] = {}


def register_command(
    name: str,
    *,
    help: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Add ``python -m harness NAME``; ``run(args)`` returns the exit code."""
    if name in ("list", "compare") or (name in _COMMANDS and _COMMANDS[name].run is not run):
        raise ValueError(f"a command named {name!r} already exists")
    _COMMANDS[name] = Command(name, help, add_arguments, run)


def _cmd_list(args: argparse.Namespace) -> int:
    from harness.pairs import get_pair, list_pairs

    for name in list_pairs(tag=args.tag):
        if args.verbose:
            pair = get_pair(name)
            tags = ",".join(sorted(pair.tags))
            print(f"{name}\t{tags}\t{pair.description}")
        else:
            print(name)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from harness.api import compare_pair
    from harness.report import write_json

    report = compare_pair(args.pair, dtype=DTYPES[args.dtype], device=_device(args.device),
                          mode="summary" if args.summary else "full")
    print(report.format(max_rows=args.rows))
    if args.json:
        path = write_json(args.json, [report.to_dict()], device=args.device)
        print(f"report written to {path}")
    return 0 if report.passed else 1


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a torch device (expected cpu, cuda, cuda:0, mps, ...)") from None
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if device.type in available and not available[device.type]():
        raise ValueError(f"--device {name!r}: torch sees no {device.type} device on this machine")
    return device


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("list", help="print the registered pairs, one per line")
    p.add_argument("--tag", help="only pairs carrying this tag (e.g. nightly)")
    p.add_argument("-v", "--verbose", action="store_true", help="also print tags and descriptions")
    p.set_defaults(run=_cmd_list)
    p = sub.add_parser("compare", help="compare a pair layer by layer; exit 0 on parity, 1 otherwise")
    p.add_argument("pair", help="a name from 'python -m harness list'")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", metavar="PATH", help="also write the report JSON (schema 1) here")
    p.add_argument("--rows", type=int, default=24, help="at most this many table rows (default 24)")
    p.add_argument("--summary", action="store_true",
                   help="keep only statistics of intermediate tensors (big models; layer errors become lower bounds)")
    p.set_defaults(run=_cmd_compare)
    for command in _COMMANDS.values():
        p = sub.add_parser(command.name, help=command.help)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from harness.pairs import _load_definitions

    _load_definitions()  # families register their pairs and commands on import
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def print_json(value: object) -> None:
    """Helper for commands with ``--json``: stable, indented JSON on stdout."""
    print(json.dumps(value, indent=2, sort_keys=True))
