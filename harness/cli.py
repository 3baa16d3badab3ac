"""Command line: ``python -m harness list | compare PAIR | <registered commands>``.

Families add their own subcommands (checkpoint inspection, metadata repair...) with
:func:`register_command` from the modules that define their pairs; the harness stays model-free.
A command is declared first (:func:`harness.catalog.register_lazy_command`: name, help, module):
its module, and whatever it imports, loads only when that command runs, so ``list`` and ``--help``
start without torch.
Exit codes: 0 success / parity, 1 parity failure, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

from harness import catalog
from harness.checks import one_line

__all__ = ["register_command", "main"]


class _Dtypes(Mapping):
    """``{"float32": torch.float32, ...}``; torch is imported when a dtype is looked up, not for the names."""

    NAMES = ("bfloat16", "float16", "float32", "float64")

    def __getitem__(self, name: str):
        if name not in self.NAMES:
            raise KeyError(name)
        import torch

        return getattr(torch, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.NAMES)

    def __len__(self) -> int:
        return len(self.NAMES)


DTYPES = _Dtypes()
# the harness's own command lives in a module that imports torch: declared here, loaded when it runs
catalog.register_lazy_command("record", module="harness.trace_cli",
                              help="run one model and write its trace file (for compare --reference-trace)")


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
    if name in ("list", "compare", "report", "map") or (name in _COMMANDS and _COMMANDS[name].run is not run):
        raise ValueError(f"a command named {name!r} already exists")
    _COMMANDS[name] = Command(name, help, add_arguments, run)


def _pair_table() -> dict[str, tuple[frozenset[str], str]]:
    """name -> (tags, description) of every pair, from the declarations; built pairs (harness.pairs
    imported, e.g. by a family registering full pairs) from themselves. Imports no model library."""
    table = {n: (p.tags, p.description) for n, p in catalog.lazy_pairs().items()}
    pairs = sys.modules.get("harness.pairs")
    if pairs is not None:
        table |= {n: (p.tags, p.description) for n, p in pairs._REGISTRY.items()}
    return table


def _cmd_list(args: argparse.Namespace) -> int:
    table = _pair_table()
    names = sorted(n for n, (tags, _) in table.items() if args.tag is None or args.tag in tags)
    if args.tag is not None and not names:
        known = sorted({t for tags, _ in table.values() for t in tags})
        raise ValueError(f"--tag {args.tag!r}: no pair carries this tag; known tags: {', '.join(known)}")
    for name in names:
        if args.verbose:
            tags, description = table[name]
            print(f"{name}\t{','.join(sorted(tags))}\t{description}")
        else:
            print(name)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from harness.api import compare_pair
    from harness.files import check_target
    from harness.report import write_json

    def finish(report) -> int:
        print(report.format(max_rows=args.rows, table=True if args.table else None))
        if args.json:
            result = report.to_dict()
            if args.candidate:  # no pair name: the command is what tells this result from others when merged
                against = (f"--reference-trace {args.reference_trace}" if args.reference_trace
                           else f"--reference {args.reference}")
                result["test"] = f"compare --candidate {args.candidate} {against}"
            path = write_json(args.json, [result], device=args.device)
            print(f"report written to {path}")
        return 0 if report.passed else 1

    if args.rows < 0:
        raise ValueError(f"--rows {args.rows}: give the number of table rows to show, 0 or more")
    if args.pair and not (args.candidate or args.reference):  # options of two models of one's own: say so
        given = [flag for flag, value in (("--map", args.map), ("--save-map", args.save_map),
                                          ("--input-shape", args.input_shape), ("--seed", args.seed),
                                          ("--randomize", args.randomize or None))
                 if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to --candidate/--reference; a registered pair "
                             f"({args.pair!r}) brings its own inputs and weights")
    for target in (args.json, args.save_map):
        if target:
            check_target(target)  # a path that cannot be written fails now, not after the comparison
    mode = "summary" if args.summary else "auto" if args.auto_summary else "full"
    if args.reference_trace:
        from harness.trace_cli import compare_pair_trace

        if args.backward:
            raise ValueError("compare --backward needs the reference model itself: a recorded trace cannot run "
                             "backward; drop --reference-trace or --backward")
        if args.candidate or args.reference:
            from harness.port_cli import run_trace_compare

            return run_trace_compare(args, {"mode": mode, "spill": args.spill, **_tolerance_option(args)}, finish)
        if not args.pair:
            raise ValueError("compare --reference-trace needs the model to compare: a registered pair whose "
                             "candidate to build, or --candidate SPEC (your port)")
        return finish(compare_pair_trace(args.pair, args.reference_trace, dtype=DTYPES[args.dtype],
                                         device=_device(args.device), mode=mode, spill=args.spill,
                                         **_tolerance_option(args)))
    if args.candidate or args.reference:
        from harness.port_cli import run_port_compare

        _device(args.device)
        return run_port_compare(args, {"mode": mode, "backward": args.backward, "spill": args.spill,
                                       **_tolerance_option(args)}, finish)
    if not args.pair:
        raise ValueError("compare needs a registered pair (python -m harness list) or "
                         "--candidate SPEC --reference SPEC for two models of your own")
    return finish(compare_pair(args.pair, dtype=DTYPES[args.dtype], device=_device(args.device),
                               mode=mode, backward=args.backward, spill=args.spill, **_tolerance_option(args)))


def _tolerance_option(args: argparse.Namespace) -> dict:
    """``--atol/--rtol`` as a tolerances override for the compared dtype (the other bound as the pair has it);
    ``--no-noise-floor``: atol/rtol alone decide at float32/bfloat16 too."""
    floor = {"noise_floor": False} if getattr(args, "no_noise_floor", False) else {}
    if args.atol is None and args.rtol is None:
        return floor
    from harness.metrics import Tolerance, tolerance_for
    from harness.pairs import get_pair

    dtype = DTYPES[args.dtype]
    pair_tolerances = dict(get_pair(args.pair).options.tolerances or {}) if args.pair else {}
    base = tolerance_for(dtype, overrides=pair_tolerances or None)
    chosen = Tolerance(atol=base.atol if args.atol is None else args.atol,
                       rtol=base.rtol if args.rtol is None else args.rtol)
    return {"tolerances": {**pair_tolerances, args.dtype: chosen}, **floor}


def _device(name: str) -> "torch.device":
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a torch device (expected cpu, cuda, cuda:0, mps, ...)") from None
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if device.type in available and not available[device.type]():
        raise ValueError(f"--device {name!r}: torch sees no {device.type} device on this machine")
    return device


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (the usage itself is what --help is for)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} ({self.prog} --help lists the options)\n")


def _parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """Every command; when ``chosen`` is given, the others that need torch or a family module get
    only their name and help (they are parsed only when they run), so that command starts at once."""
    def full(name: str) -> bool:
        return chosen is None or chosen == name

    parser = _Parser(prog="python -m harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("list", help="print the registered pairs, one per line")
    p.add_argument("--tag", help="only pairs carrying this tag (e.g. nightly)")
    p.add_argument("-v", "--verbose", action="store_true", help="also print tags and descriptions")
    p.set_defaults(run=_cmd_list)
    p = sub.add_parser("compare", help="compare a pair layer by layer; exit 0 on parity, 1 otherwise")
    p.add_argument("pair", nargs="?", help="a name from 'python -m harness list' (or use --candidate/--reference)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", metavar="PATH", help="also write the report JSON (schema 1) here")
    p.add_argument("--rows", type=int, default=24, help="at most this many table rows (default 24)")
    p.add_argument("--summary", action="store_true",
                   help="keep only statistics of intermediate tensors (big models; layer errors become lower bounds)")
    p.add_argument("--auto-summary", action="store_true",
                   help="trace in full unless the trace would not fit in memory, then as with --summary")
    spill = p.add_mutually_exclusive_group()
    spill.add_argument("--spill", nargs="?", const=True, default="auto", metavar="DIR",
                       help="keep all the full traces' large copies in files in DIR (default: the temp folder), "
                            "read back as they are measured: exact layer errors when the traces do not fit in "
                            "memory (without the flag, copies beyond each trace's first 256 MiB go to the temp "
                            "folder when it is on disk)")
    spill.add_argument("--no-spill", dest="spill", action="store_false",
                       help="keep the full traces in memory, however large")
    p.add_argument("--atol", type=float, help="absolute tolerance for this run (default: the dtype's policy)")
    p.add_argument("--rtol", type=float, help="relative tolerance for this run (default: the dtype's policy)")
    p.add_argument("--table", action="store_true", help="print the per-layer table even when the pair passes")
    p.add_argument("--no-noise-floor", action="store_true",
                   help="judge float32/bfloat16 by --atol/--rtol alone, not against the reference's own rounding "
                        "error measured on a float64 copy (the default below float64)")
    p.add_argument("--backward", action="store_true",
                   help="also run backward from one seeded loss and compare gradients per parameter and per module")
    p.add_argument("--reference-trace", metavar="FILE",
                   help="compare with a reference recorded by 'python -m harness record' instead of building it")
    if full("compare"):
        from harness import port_cli

        port_cli.add_port_arguments(p)
    p.set_defaults(run=_cmd_compare)
    p = sub.add_parser("map", help="infer which reference tensor feeds which candidate tensor; print the table")
    if full("map"):
        from harness import port_cli

        port_cli.add_map_arguments(p)
        p.set_defaults(run=port_cli.run_map)
    from harness import report_cli

    p = sub.add_parser("report", help="render pages from report JSON, merge shard reports, diff two runs")
    report_cli.add_arguments(p)
    p.set_defaults(run=report_cli.run)
    for command in _COMMANDS.values():
        p = sub.add_parser(command.name, help=command.help)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    for command in catalog.lazy_commands().values():
        if command.name not in _COMMANDS:  # declared, its module not imported: not the chosen one
            sub.add_parser(command.name, help=command.help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    declared = catalog.lazy_commands()  # families declare their pairs and commands (entry points)
    if chosen in declared and chosen not in _COMMANDS:
        importlib.import_module(declared[chosen].module)  # registers the command in full
        if chosen not in _COMMANDS:
            print(f"error: command {chosen!r} is declared by module {declared[chosen].module}, which did not "
                  f"register it (harness.cli.register_command)", file=sys.stderr)
            return 2
    parser = _parser(chosen or "")  # no command (--help): names and help only
    args = parser.parse_args(argv)
    shapes_given = getattr(args, "input_shape", None) is not None  # before a command fills in its default
    try:
        return int(args.run(args))
    except OSError as exc:  # a report, golden or checkpoint that cannot be read or written
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as exc:
        print(f"error: {_for_command_line(exc, args, shapes_given)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from harness.guards import ForwardFailed  # only a comparison raises it, and then torch is loaded

        if not isinstance(exc, ForwardFailed):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _for_command_line(exc: Exception, args: argparse.Namespace, shapes_given: bool) -> str:
    """``exc``'s message, its fix worded in the command's options where Python's would be wrong:
    inputs made from ``--input-shape`` that a model's forward does not take (one ``--input-shape``
    per input), models given in each other's place for a ``--map``."""
    shapes = getattr(args, "input_shape", None)
    if shapes and isinstance(exc, _loaded("harness.guards", "WrongArguments")):
        return exc.on_command_line(shapes, shapes_given)
    if getattr(args, "map", None) and isinstance(exc, _loaded("harness.weightmap", "ModelsSwapped")):
        return (f"--candidate and --reference look swapped for --map {args.map}: its candidate tensors are those of "
                f"the --reference model, its reference tensors those of the --candidate model; give them the other "
                f"way round")
    return str(exc)


def _loaded(module: str, name: str) -> type | tuple:
    """Class ``name`` of ``module`` where a command imported it (else no class: torch stays unloaded)."""
    return getattr(sys.modules.get(module), name, ())


def _one_line(exc: OSError) -> str:
    """The OSError's message on one line, naming the file (``exc.filename``) when the message does not."""
    text = exc.strerror or str(exc)
    for name in (exc.filename, exc.filename2):
        if name is not None and str(name) not in text:
            text = f"{name}: {text}"
    return one_line(text)


def print_json(value: object) -> None:
    """Helper for commands with ``--json``: stable, indented JSON on stdout."""
    print(json.dumps(value, indent=2, sort_keys=True))
