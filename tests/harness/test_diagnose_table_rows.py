"""A position table stored right but added otherwise than its twin is said to be added otherwise in
the words of what changed: one block of it zeroed (the class token's row left out of the add),
one block holding other values, its rows rolled; never "in another layout" for a part changed."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

import harness
from helpers import compare_port, findings_text

N, C = 6, 8


class _Embeddings(nn.Module):
    """Patch tokens after a class token, plus a position table; ``edit`` makes what is added of it."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, C)
        self.class_token = nn.Parameter(torch.zeros(1, 1, C))
        self.pos = nn.Parameter(torch.zeros(1, N + 1, C))
        self.edit: Callable[[torch.Tensor], torch.Tensor] = lambda table: table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.class_token.expand(len(x), -1, -1), self.proj(x)], 1)
        return tokens + self.edit(self.pos)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embeddings, self.head = _Embeddings(), nn.Linear(C, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embeddings(x)))


def _class_row_zeroed(table: torch.Tensor) -> torch.Tensor:
    table = table.clone()
    table[:, 0] = 0
    return table


def _third_row_doubled(table: torch.Tensor) -> torch.Tensor:
    table = table.clone()
    table[:, 2] = 2 * table[:, 2]
    return table


def _why(edit: Callable[[torch.Tensor], torch.Tensor]) -> str:
    reference = _Net().double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    x = torch.randn(2, N, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = compare_port(_Net().double().eval(), reference, x, lambda net: setattr(net.embeddings, "edit", edit))
    assert not report.passed and report.culprit == "embeddings", \
        f"expected the embeddings to fail, got culprit {report.culprit}:\n{findings_text(report.diagnosis)}"
    return report.diagnosis[0]["text"]


def test_class_token_row_left_out_of_the_add_is_named_zeroed() -> None:
    why = _why(_class_row_zeroed)
    expected = ("add operand pos is stored right (as the weight map puts it) but passed with [:, 0:1] zeroed, "
                "where the reference's pos holds values (the rest agrees)")
    assert expected in why and "another layout" not in why, f"expected row 0 zeroed, got:\n{why}"


def test_one_row_changed_is_named_with_other_values() -> None:
    why = _why(_third_row_doubled)
    expected = "passed with [:, 2:3] holding other values than the reference's pos (the rest agrees)"
    assert expected in why and "another layout" not in why, f"expected row 2 changed, got:\n{why}"


def test_rows_rolled_are_named_rolled() -> None:
    why = _why(lambda table: torch.roll(table, 1, 1))
    expected = "its values reordered, along dim 1, rolled by 1"
    assert expected in why, f"expected the rows rolled, got:\n{why}"
