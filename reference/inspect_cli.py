"""The checkpoint commands: ``inspect`` (what a checkpoint is) and ``compat`` (whether two join).

``python -m harness inspect CHECKPOINT`` prints the recognized family and layout
(:mod:`candidates.recognize`, every family's ``recognize``), the dimensions inferable from the
tensor shapes and the parameter count (``--json`` for machines), and for a RoPE-ViT where its
head count comes from (``num_heads_source``: derived from a shape, given with ``--num-heads``, or
assumed: the original release's layout does not store it). Unreadable or malformed files exit 2
through the harness CLI's error handling.

``python -m harness compat CONVNEXT ROPE_VIT`` prints the mFormerV1 compatibility table row of a
ConvNeXt and a RoPE-ViT checkpoint (either layout; :func:`candidates.mformer.compat_row`); it exits
0 when the pair is compatible and 1 (after printing the row and an error naming both widths) when
not. Both commands read checkpoints through :mod:`candidates.recognize` and import no torch.
"""

from __future__ import annotations

import argparse
import sys

from harness.cli import print_json, register_command

from candidates.mformer.assembly import compat_row
from candidates.recognize import inspect_checkpoint

__all__ = ["num_heads_argument"]


def num_heads_argument(parser: argparse.ArgumentParser) -> None:
    """``--num-heads N``, for the commands that read a RoPE-ViT checkpoint."""
    parser.add_argument(
        "--num-heads", type=int, metavar="N",
        help="RoPE-ViT head count; the original release's layout does not store it (checked against "
             "the shapes where a layout does)",
    )


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .pth/.pt/.bin/.ckpt or .safetensors state dict")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    num_heads_argument(parser)


def _inspect(args: argparse.Namespace) -> int:
    info = inspect_checkpoint(args.checkpoint, num_heads=args.num_heads)
    if args.json:
        print_json(info.to_dict())
    else:
        print(info.format())
    return 0


register_command(
    "inspect",
    help="recognize a checkpoint's family and print its inferred dimensions and parameter count",
    add_arguments=_inspect_arguments,
    run=_inspect,
)


def _compat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("convnext", metavar="CONVNEXT_CKPT", help="ConvNeXt checkpoint (timm or original layout)")
    parser.add_argument("rope_vit", metavar="ROPE_VIT_CKPT", help="RoPE-Mixed ViT checkpoint (timm or original layout)")
    parser.add_argument("--json", action="store_true", help="print the row as JSON instead of a table")
    num_heads_argument(parser)


def _compat(args: argparse.Namespace) -> int:
    rope_vit = inspect_checkpoint(args.rope_vit, num_heads=args.num_heads)
    row = compat_row(inspect_checkpoint(args.convnext), rope_vit)
    if args.json:
        print_json(row.to_dict())
    else:
        print(row.format())
    if not row.compatible:
        print(f"error: {row.error}", file=sys.stderr)
        return 1
    return 0


register_command(
    "compat",
    help="mFormerV1 compatibility of a ConvNeXt and a RoPE-ViT checkpoint; exit 1 if incompatible",
    add_arguments=_compat_arguments,
    run=_compat,
)
