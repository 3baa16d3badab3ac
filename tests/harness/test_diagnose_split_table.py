"""A position table added in two slices (its patch rows to the patches, its class row to the class
token, before the two are joined) against one add of the whole table: the two adds are ops side by
side, not one computation written out, so they are never explained as a hand-written add."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import compare_port, findings_text

C, N = 8, 12


class _Embed(nn.Module):
    """Patches (B, N, C) and a class token joined, then the whole position table added."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, C)
        self.cls_token, self.pos_embed = nn.Parameter(torch.zeros(1, 1, C)), nn.Parameter(torch.zeros(1, N + 1, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), self.proj(x)], 1)
        return tokens + self.pos_embed


class _SplitEmbed(_Embed):
    """The table's rows added to each part before the join; ``reversed_rows``: the patch rows in reverse."""

    reversed_rows = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.pos_embed[:, 1:].flip(1) if self.reversed_rows else self.pos_embed[:, 1:]
        patches = self.proj(x) + rows
        cls = self.cls_token + self.pos_embed[:, :1]
        return torch.cat([cls.expand(x.shape[0], -1, -1), patches], 1)


def _report(change) -> harness.Report:
    reference = nn.Sequential(_Embed(), nn.LayerNorm(C)).double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    x = torch.randn(2, N, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return compare_port(nn.Sequential(_SplitEmbed(), nn.LayerNorm(C)).double().eval(), reference, x, change)


def test_a_table_added_in_two_slices_passes() -> None:
    assert _report(lambda port: None).passed


def test_two_slices_of_a_table_added_side_by_side_are_not_a_hand_written_add() -> None:
    report = _report(lambda port: setattr(port[0], "reversed_rows", True))
    assert not report.passed and not any("hand-written" in f["text"] for f in report.diagnosis), \
        findings_text(report.diagnosis)
