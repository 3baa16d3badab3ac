"""What a forward computes from parameters alone (a position-bias MLP on a coordinate table) pairs
with its twin wherever each side computes it: one port builds the table first thing, another right
where it adds it to the scores. Aligned where they stand, the ops on the activations would pair
with the table's, and a missing shift read as a hand-written table."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import compare_port, findings_text

DIM, TOKENS = 8, 6


class _BiasMlp(nn.Module):
    """A bias for each pair of tokens, computed by a small MLP from a fixed coordinate table."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(2, 16), nn.Linear(16, 1)
        at = torch.arange(TOKENS, dtype=torch.float32)
        self.register_buffer("coords", torch.stack(torch.meshgrid(at, at, indexing="ij"), -1) / TOKENS,
                             persistent=False)

    def forward(self) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.coords))).squeeze(-1)


class _TableFirst(nn.Module):
    """Shifts the tokens by one (``shift``), mixes them by ``softmax(q q^T * s + bias + mask)``
    (the mask, of the shifted tokens, added only with the shift): the bias and the scale ``s``,
    ``exp`` of a parameter, computed first thing in the forward."""

    def __init__(self, shift: bool = True) -> None:
        super().__init__()
        self.bias, self.q, self.shift = _BiasMlp(), nn.Linear(DIM, DIM), shift
        self.logit_scale = nn.Parameter(torch.full((1,), -1.0))
        self.register_buffer("mask", torch.triu(torch.full((TOKENS, TOKENS), -100.0), 3), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias, scale = self.bias(), self.logit_scale.exp()
        x = torch.roll(x, 1, dims=1) if self.shift else x
        q = nn.functional.normalize(self.q(x), dim=-1)
        scores = q @ q.transpose(-1, -2) * scale + bias
        return (scores + self.mask if self.shift else scores).softmax(-1) @ q


class _TableAtTheAdd(_TableFirst):
    """The same, the bias computed right where it is added."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = nn.functional.normalize(self.q(torch.roll(x, 1, dims=1)), dim=-1)
        scores = q @ q.transpose(-1, -2) * self.logit_scale.exp() + self.bias()
        return (scores + self.mask).softmax(-1) @ q


def _report(change=lambda model: None):
    reference = _TableAtTheAdd().double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    x = torch.randn(2, TOKENS, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return compare_port(_TableFirst().double().eval(), reference, x, change)


def test_a_table_computed_first_against_one_computed_at_its_add_passes() -> None:
    report = _report()
    assert report.passed, f"the table's place in the forward failed the port:\n{findings_text(report.diagnosis)}"


def test_a_missing_shift_is_named_whatever_the_tables_place() -> None:
    report = _report(lambda model: setattr(model, "shift", False))
    why = findings_text(report.diagnosis)
    assert not report.passed and "roll" in why.splitlines()[0] and "missing" in why.splitlines()[0], \
        f"expected the missing roll named first, got:\n{why}"


def test_a_missing_shift_is_no_hand_written_table() -> None:
    why = findings_text(_report(lambda model: setattr(model, "shift", False)).diagnosis)
    assert "hand-written" not in why, f"the ops on the shifted tokens were read as the table's:\n{why}"
