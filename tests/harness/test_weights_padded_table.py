"""A position table kept whole for the class token and the patches, against one added to the
patches alone before the class token joins them (timm's ``no_embed_class``): the port's table is
the reference's with a zero row in front."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness
from helpers import transferred

D, N = 16, 6


class PatchesOnly(nn.Module):
    """The original: the table is added to the patches; the class token gets none."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Linear(8, D)
        self.cls_token, self.pos_embed = nn.Parameter(torch.randn(1, 1, D)), nn.Parameter(torch.randn(1, N, D))
        self.mix, self.head = nn.Linear(D, D), nn.Linear(D, 4)

    def forward(self, x):
        x = self.patch(x) + self.pos_embed
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
        return self.head(torch.tanh(self.mix(x))[:, 0] + x[:, 1:].mean(1))


class WholeTable(nn.Module):
    """The port: the class token joins first, then one table covers every token."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, D)
        self.cls, self.position = nn.Parameter(torch.randn(1, 1, D)), nn.Parameter(torch.randn(1, 1 + N, D))
        self.ff, self.out = nn.Linear(D, D), nn.Linear(D, 4)

    def forward(self, x):
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.proj(x)], 1) + self.position
        return self.out(torch.tanh(self.ff(x))[:, 0] + x[:, 1:].mean(1))


@pytest.fixture
def ported():
    torch.manual_seed(0)
    x = torch.randn(2, N, 8, dtype=torch.float64)
    return (*transferred(WholeTable().double().eval(), PatchesOnly().double().eval(), x), x)


def test_whole_table_is_the_patch_table_after_a_zero_row(ported):
    port, original, weights, x = ported
    entry = next(e for e in weights.entries if e.candidate == "position")
    assert entry.reference == ("pos_embed",) and entry.steps[0]["op"] == "insert", f"entry {entry}"


def test_map_with_the_zero_row_is_verified_and_covers_the_port(ported):
    port, original, weights, x = ported
    assert weights.verified and weights.coverage == 1.0, f"verified {weights.verified}, coverage {weights.coverage}\n{weights}"


def test_correct_port_through_the_padded_table_passes(ported):
    port, original, weights, x = ported
    assert harness.compare(port, original, x, weights=weights).passed


def test_read_back_the_zero_row_is_dropped(ported):
    port, original, weights, x = ported
    back = weights.to_reference(port.state_dict())
    assert torch.equal(back["pos_embed"], original.pos_embed.detach()), "the reference table did not come back"


def test_read_back_a_port_whose_class_row_is_not_zero_raises(ported):
    port, original, weights, x = ported
    with torch.no_grad():
        port.position[0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="position"):
        weights.to_reference(port.state_dict())
