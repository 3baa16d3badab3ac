"""A module re-run on its twin's inputs, where the two are called otherwise (the port's window
attention takes ``(windows, mask)`` positionally, the original's ``(x, mask=...)``), gets each of
the twin's inputs for one argument only: where the windows and the mask share a shape, the windows
go to the windows and the mask to the mask (the one holding its values), not the windows to both.
So a block that skips its shift, given the same mask, is blamed, and its attention is cleared."""

from __future__ import annotations

import torch
from torch import nn

from helpers import compare_port
from port_toys import MaskedWindowAttention

D = T = 6  # tokens per window == channels: the windows (B, T, D) and the mask (B, T, T) share a shape
B = 2


def _mask() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.where(torch.rand(B, T, T, generator=g) < 0.3, -100.0, 0.0).double()


class Block(nn.Module):
    """The original: the attention given its mask as a keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(D), MaskedWindowAttention(D)
        self.register_buffer("mask", _mask(), persistent=False)

    def forward(self, x):
        return x + self.attn(self.norm(x).roll(1, 1), mask=self.mask).roll(-1, 1)


class PortBlock(Block):
    """The port: the mask passed positionally, whether or not the block shifts (``shift``)."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = 1

    def forward(self, x):
        return x + self.attn(self.norm(x).roll(self.shift, 1), self.mask).roll(-self.shift, 1)


class MaskFirstAttention(MaskedWindowAttention):
    """A port's attention taking the mask first."""

    def forward(self, mask, x):
        return super().forward(x, mask)


class MaskFirstBlock(PortBlock):
    def __init__(self) -> None:
        super().__init__()
        self.attn = MaskFirstAttention(D)

    def forward(self, x):
        return x + self.attn(self.mask, self.norm(x).roll(self.shift, 1)).roll(-self.shift, 1)


class Model(nn.Module):
    def __init__(self, block: type[nn.Module]) -> None:
        super().__init__()
        self.embed, self.block, self.head = nn.Linear(4, D), block(), nn.Linear(D, 2)

    def forward(self, x):
        return self.head(self.block(self.embed(x)))


def _without_shift(port: type[nn.Module] = PortBlock):
    torch.manual_seed(0)
    x = torch.randn(B, T, 4, dtype=torch.float64)
    return compare_port(Model(port).double().eval(), Model(Block).double().eval(), x,
                        lambda model: setattr(model.block, "shift", 0))


def test_a_block_that_skips_its_shift_is_the_culprit_when_its_windows_and_mask_share_a_shape():
    report = _without_shift()
    assert report.culprit == "block", f"culprit {report.culprit!r}, expected 'block'\n{report.format()}"


def test_its_attention_given_the_references_windows_and_mask_is_cleared():
    row = next(r for r in _without_shift().rows if r.candidate == "block.attn")
    assert (row.status, row.reran) == ("propagated", True), \
        f"block.attn is {row.status!r} (re-run: {row.reran}): it was given the reference's windows for its mask"


def test_an_attention_taking_the_mask_first_is_given_the_references_mask_there():
    report = _without_shift(MaskFirstBlock)
    assert report.culprit == "block", f"culprit {report.culprit!r}, expected 'block' (the mask holds the same values)"
