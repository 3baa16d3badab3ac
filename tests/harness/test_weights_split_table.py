"""A table one model keeps whole and the other in parts: a ViT position table ``(1, 1 + N, C)``
added after the class token is joined, against a class-token row added before the join and a grid
added to the patch map (channels first or last). Each part is a slice of the whole, re-laid out."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness
from port_toys import images, randomized

C, P, GRID = 8, 2, 3  # 6x6 images: a 3x3 grid of 2x2 patches


class WholeTable(nn.Module):
    """timm's order: patches, class token joined, then one position table for all tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, C, P, P)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + GRID * GRID, C))
        self.norm = nn.LayerNorm(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)                        # (B, N, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)   # (B, 1 + N, C)
        return self.norm(x + self.pos_embed)                               # (B, 1 + N, C)


class PartsTable(nn.Module):
    """A port adding the grid to the patch map and the class row to the class token."""

    def __init__(self, channels_last: bool) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.patch = nn.Conv2d(3, C, P, P)
        self.pos_grid = nn.Parameter(torch.zeros((1, GRID, GRID, C) if channels_last else (1, C, GRID, GRID)))
        self.cls = nn.Parameter(torch.zeros(1, 1, C))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, C))
        self.ln = nn.LayerNorm(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x)                                                  # (B, C, h, w)
        if self.channels_last:
            x = (x.permute(0, 2, 3, 1) + self.pos_grid).flatten(1, 2)     # (B, N, C)
        else:
            x = (x + self.pos_grid).flatten(2).transpose(1, 2)            # (B, N, C)
        cls = (self.cls + self.cls_pos).expand(x.shape[0], -1, -1)        # (B, 1, C)
        return self.ln(torch.cat([cls, x], 1))                            # (B, 1 + N, C)


@pytest.fixture(params=["grid channels first", "grid channels last"])
def split(request):
    candidate = randomized(PartsTable(channels_last=request.param == "grid channels last"), 1)
    reference = randomized(WholeTable(), 2)
    return candidate, reference, harness.map_weights(candidate, reference, images())


def test_a_class_row_and_a_position_grid_are_slices_of_one_position_table(split):
    _, _, weights = split
    sources = {e.candidate: (e.reference, e.steps[0]) for e in weights.entries if e.candidate in ("cls_pos", "pos_grid")}
    assert sources == {"cls_pos": (("pos_embed",), {"op": "slice", "dim": 1, "start": 0, "stop": 1}),
                       "pos_grid": (("pos_embed",), {"op": "slice", "dim": 1, "start": 1, "stop": 1 + GRID * GRID})}, \
        str(weights)


def test_a_split_position_table_map_is_complete_and_verified(split):
    _, _, weights = split
    assert (weights.coverage, weights.unmatched, weights.verified) == (1.0, {"candidate": [], "reference": []}, True), \
        str(weights)


def test_a_port_with_a_split_position_table_passes_once_transferred(split):
    candidate, reference, weights = split
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, images(), weights=weights)
    assert report.passed, report.format()


def test_the_parts_read_backward_give_the_whole_table(split):
    candidate, reference, weights = split
    weights.transfer(reference, candidate)
    back = weights.to_reference(candidate.state_dict())
    assert torch.equal(back["pos_embed"], reference.pos_embed.detach()), str(weights)
