"""``python -m harness add-metadata CKPT``: give a legacy resampler checkpoint its metadata.

Finds the resampler's keys (``--prefix``, or the only prefix followed by ``input_proj.weight``,
as in a Lightning ``.ckpt`` holding ``resampler_module.resampler.*``), infers the configuration
from the weight shapes (see ``candidates/resampler/checkpoint.py``), fills the fields the
weights cannot tell (``norm_eps``, ``preset``) from ``--preset`` or the library defaults, prints
where every field and the prefix came from, and writes ``CKPT``'s ``.metadata.json``
atomically. Exit 0 on success, 2 on a bad file (the harness CLI prints the error).
"""

from __future__ import annotations

import argparse

from candidates.resampler.checkpoint import write_metadata
from candidates.resampler.resampler import PRESETS, ResamplerConfig
from harness.cli import register_command


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="weights file: .safetensors, or .pth/.pt/.ckpt (read weights-only)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default=None,
        help="defaults for the fields the weights cannot tell (default: ResamplerConfig())",
    )
    parser.add_argument(
        "--prefix", default=None,
        help="key prefix of the resampler inside the file, e.g. resampler_module.resampler. "
             "(default: the only prefix followed by input_proj.weight)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing metadata")


def _run(args: argparse.Namespace) -> int:
    defaults = ResamplerConfig.from_preset(args.preset) if args.preset else ResamplerConfig()
    path, config, sources, prefix = write_metadata(
        args.checkpoint, defaults=defaults, force=args.force, prefix=args.prefix
    )
    print(f"{'prefix':<10} = {prefix}")
    for name in ResamplerConfig.field_names():
        print(f"{name:<10} = {getattr(config, name)!r:<12} <- {sources[name]}")
    print(f"metadata written to {path}")
    return 0


register_command(
    "add-metadata",
    help="write the metadata JSON (full config, versions, weights hash) for a resampler checkpoint",
    add_arguments=_add_arguments,
    run=_run,
)
