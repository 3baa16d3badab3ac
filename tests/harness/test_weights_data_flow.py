"""Two branches exchanging their class tokens (CrossViT): the reference projects both class tokens
to the other branch's width first, then mixes each with the other branch and projects it back; a port
does the whole exchange one branch at a time. The layer norms and projections of one width are then
used in another order on the two sides, and order of use alone gives each the tensors of a sibling of
the same shape. What each reads tells them apart: a norm reading the projected class token is the
twin of the reference's norm reading its projected class token, not of the one reading the branch."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import transferred
from port_toys import randomized

WIDTHS, TOKENS = (8, 12), 5


def _mixed(norm: nn.Module, cls: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """The class token plus the mean of the normed class token and the other branch's patches."""
    return cls + norm(torch.cat([cls, other[:, 1:]], 1)).mean(1, keepdim=True)


class _ProjectFirst(nn.Module):
    """Both class tokens projected first, then mixed and projected back, branch by branch."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.ModuleList([nn.Linear(WIDTHS[0], w) for w in WIDTHS])
        self.projs = nn.ModuleList([nn.Sequential(nn.LayerNorm(WIDTHS[i]), nn.Linear(WIDTHS[i], WIDTHS[1 - i]))
                                    for i in range(2)])
        self.mix = nn.ModuleList([nn.LayerNorm(WIDTHS[1 - i]) for i in range(2)])
        self.revert = nn.ModuleList([nn.Sequential(nn.LayerNorm(WIDTHS[1 - i]), nn.Linear(WIDTHS[1 - i], WIDTHS[i]))
                                     for i in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [enc(x) for enc in self.enc]
        projected = [proj(y[:, :1]) for proj, y in zip(self.projs, ys)]
        backs = [self.revert[i](_mixed(self.mix[i], projected[i], ys[1 - i])) for i in range(2)]
        return torch.cat([torch.cat([b, y[:, 1:]], 1).flatten(1) for b, y in zip(backs, ys)], 1)


class _Exchange(nn.Module):
    """One branch's whole exchange: project its class token, mix it with the other branch, project back."""

    def __init__(self, width: int, other: int) -> None:
        super().__init__()
        self.ln_out, self.go = nn.LayerNorm(width), nn.Linear(width, other)
        self.ln_mix = nn.LayerNorm(other)
        self.ln_back, self.back = nn.LayerNorm(other), nn.Linear(other, width)

    def forward(self, cls: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return self.back(self.ln_back(_mixed(self.ln_mix, self.go(self.ln_out(cls)), other)))


class _OneBranchAtATime(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.ModuleList([nn.Linear(WIDTHS[0], w) for w in WIDTHS])
        self.exchange = nn.ModuleList([_Exchange(WIDTHS[i], WIDTHS[1 - i]) for i in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [enc(x) for enc in self.enc]
        backs = [self.exchange[i](ys[i][:, :1], ys[1 - i]) for i in range(2)]
        return torch.cat([torch.cat([b, y[:, 1:]], 1).flatten(1) for b, y in zip(backs, ys)], 1)


TWINS = {f"exchange.{i}.{mine}": theirs.format(i=i) for i in range(2) for mine, theirs in
         [("ln_out", "projs.{i}.0"), ("go", "projs.{i}.1"), ("ln_mix", "mix.{i}"), ("ln_back", "revert.{i}.0"),
          ("back", "revert.{i}.1")]}


def _tokens() -> torch.Tensor:
    return torch.randn(2, TOKENS, WIDTHS[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _misplaced(weights, twins: dict[str, str]) -> list[str]:
    return [f"{e.candidate} <- {e.reference[0]}" for e in weights.entries
            if e.candidate.rsplit(".", 1)[0] in twins and e.reference != (f"{twins[e.candidate.rsplit('.', 1)[0]]}."
                                                                          f"{e.candidate.rsplit('.', 1)[1]}",)]


def test_a_branch_exchanged_at_once_takes_its_twins_norms_and_projections():
    _, _, weights = transferred(_OneBranchAtATime().double().eval(), randomized(_ProjectFirst(), 1), _tokens())
    assert not _misplaced(weights, TWINS), f"tensors given a sibling's values: {_misplaced(weights, TWINS)}\n{weights}"


def test_a_port_exchanging_one_branch_at_a_time_passes():
    candidate, reference, weights = transferred(_OneBranchAtATime().double().eval(), randomized(_ProjectFirst(), 1),
                                                _tokens())
    report = harness.compare(candidate, reference, _tokens(), weights=weights)
    assert weights.verified and report.passed, f"expected a verified map and a pass; got:\n{weights}\n{report.format()}"

