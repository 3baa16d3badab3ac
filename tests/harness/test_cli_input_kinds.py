"""``--input-shape`` takes a kind after a colon for inputs that are not floats: ``1x6:int50`` token
ids in ``[0, 50)``, ``1x6:bool`` a padding mask (no row masked whole), ``1x6:ones``. They keep their
own dtype whatever ``--dtype`` says, so a model reading ids and a mask compares from the command
line; an unknown kind is one ``error:`` line naming the kinds there are.

The model specs are this file's own functions (``test_cli_input_kinds.py:NAME``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from harness.cli import main
from harness.specs import random_inputs

HERE = str(Path(__file__))


class Tokens(nn.Module):
    """Embeds ids and pools the positions a mask keeps: ``forward(ids, keep)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(50, 8), nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if ids.dtype != torch.int64 or keep.dtype != torch.bool:
            raise TypeError(f"expected int64 ids and a bool mask, got {ids.dtype} and {keep.dtype}")
        kept = keep[..., None].to(self.head.weight.dtype)
        return self.head((self.embed(ids) * kept).sum(1) / kept.sum(1))


def tokens():
    torch.manual_seed(0)
    return Tokens()


def test_ids_and_a_mask_from_input_kinds_compare_from_the_command_line(capsys):
    code = main(["compare", "--candidate", f"{HERE}:tokens", "--reference", f"{HERE}:tokens",
                 "--input-shape", "2x6:int50", "--input-shape", "2x6:bool", "--dtype", "float64"])
    assert code == 0, capsys.readouterr()


def test_int_inputs_are_drawn_below_their_bound_as_int64():
    ids, = random_inputs(["4x100:int7"], torch.float32)
    assert ids.dtype == torch.int64 and int(ids.min()) >= 0 and int(ids.max()) == 6, (ids.dtype, ids.min(), ids.max())


def test_a_mask_input_keeps_the_first_position_of_every_row():
    mask, = random_inputs(["64x5:bool"], torch.float64)
    assert mask.dtype == torch.bool and bool(mask[:, 0].all()) and not bool(mask.all()), mask


def test_ones_take_the_dtype():
    ones, = random_inputs(["2x3:ones"], torch.bfloat16)
    assert ones.dtype == torch.bfloat16 and bool((ones == 1).all())


@pytest.mark.parametrize("kind", ["int", "int0", "long", "mask"])
def test_an_unknown_input_kind_is_one_error_line_naming_the_kinds(capsys, kind):
    code = main(["map", f"{HERE}:tokens", f"{HERE}:tokens", "--input-shape", f"2x6:{kind}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"unknown input kind {kind!r}" in lines[0] \
        and "int<N>" in lines[0] and "bool" in lines[0], f"exit {code}: {lines}"
