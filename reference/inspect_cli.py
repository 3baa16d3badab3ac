"""``python -m harness inspect CHECKPOINT``: which family and layout a checkpoint is, and its dimensions.

Prints the recognized family and layout (:mod:`candidates.recognize`, every family's
``recognize``), the dimensions inferable from the tensor shapes and the parameter count
(``--json`` for machines), and for a RoPE-ViT where its head count comes from
(``num_heads_source``: derived from a shape, given with ``--num-heads``, or assumed: the original
release's layout does not store it). Unreadable or malformed files exit 2 through the harness
CLI's error handling. The mFormerV1 ``compat`` command, which shares ``--num-heads``, is in
:mod:`reference.mformer`.
"""

from __future__ import annotations

import argparse

from harness.cli import print_json, register_command

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
