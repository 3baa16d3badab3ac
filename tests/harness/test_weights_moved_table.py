"""A position table one model adds to its ``(C, h, w)`` feature map and the other to the tokens
``flatten(2).transpose(1, 2)`` makes of that map (TNT's pixel table kept as ``(pixels, C)``): the same
values with the channels moved last and the grid merged into one token dim. The map reshapes the
table's channels and grid into two dims and transposes them; read backward, the map table comes back."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import harness
from harness.weightmap import layout_steps
from helpers import transferred
from port_toys import randomized

C, GRID = 8, 4


class _MapTable(nn.Module):
    """Patches by a stride-2 conv, a ``(1, C, h, w)`` table added to the map, then tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, C, 2, stride=2)
        self.pos = nn.Parameter(torch.zeros(1, C, GRID, GRID))
        self.norm = nn.LayerNorm(C)
        self.head = nn.Linear(C, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm((self.patch(x) + self.pos).flatten(2).transpose(1, 2)))


class _TokenTable(nn.Module):
    """The same, the table added to the tokens: ``(h * w, C)``, or ``(1, h * w, C)`` with ``batched``."""

    def __init__(self, batched: bool = False) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, C, 2, stride=2)
        self.pos = nn.Parameter(torch.zeros((1,) * batched + (GRID * GRID, C)))
        self.norm = nn.LayerNorm(C)
        self.head = nn.Linear(C, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(F.layer_norm(t, (C,), self.norm.weight, self.norm.bias, self.norm.eps))


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 2 * GRID, 2 * GRID, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _tokens_of(table: torch.Tensor) -> torch.Tensor:
    return table.detach().flatten(2).transpose(1, 2)


def test_a_token_table_takes_the_map_table_with_its_channels_moved_last():
    candidate, reference, weights = transferred(_TokenTable().double().eval(), randomized(_MapTable(), 3), _images())
    want = _tokens_of(reference.pos)[0]
    assert weights.coverage == 1.0 and torch.equal(candidate.pos.detach(), want), \
        f"expected pos <- pos as (h * w, C) tokens, coverage 1.0; got:\n{weights}"


def test_a_port_adding_its_table_to_the_tokens_passes():
    candidate, reference, weights = transferred(_TokenTable().double().eval(), randomized(_MapTable(), 3), _images())
    report = harness.compare(candidate, reference, _images(), weights=weights)
    assert weights.verified and report.passed, f"expected a verified map and a pass; got:\n{weights}\n{report.format()}"


def test_a_batched_token_table_takes_the_map_table_moved_not_reshaped():
    candidate, reference, weights = transferred(_TokenTable(batched=True).double().eval(), randomized(_MapTable(), 3),
                                                _images())
    got, want = candidate.pos.detach(), _tokens_of(reference.pos)
    assert torch.equal(got, want), \
        f"expected the (1, h * w, C) table to hold the map table's tokens; max difference {(got - want).abs().max()}" \
        f" through:\n{weights}"


def test_a_map_table_takes_the_token_table_moved_back():
    candidate, reference, weights = transferred(_MapTable().double().eval(), randomized(_TokenTable(), 3), _images())
    want = reference.pos.detach().t().reshape(1, C, GRID, GRID)
    assert weights.coverage == 1.0 and torch.equal(candidate.pos.detach(), want), \
        f"expected pos <- pos as a (1, C, h, w) map, coverage 1.0; got:\n{weights}"


def test_the_token_table_read_backward_gives_back_the_map_table():
    candidate, reference, weights = transferred(_TokenTable().double().eval(), randomized(_MapTable(), 3), _images())
    back = weights.to_reference(dict(candidate.state_dict()))["pos"]
    assert torch.equal(back, reference.pos.detach()), f"expected pos back as (1, C, h, w); got shape {tuple(back.shape)}"


def test_tokens_against_a_map_are_its_grid_merged_then_transposed():
    steps, _ = layout_steps((GRID * GRID, C), (1, C, GRID, GRID))
    table = torch.arange(C * GRID * GRID, dtype=torch.float64).reshape(1, C, GRID, GRID)
    got = harness.keymap.apply_steps(table, steps)
    assert torch.equal(got, _tokens_of(table)[0]), f"steps {steps} give another order than flatten(2).transpose(1, 2)"
