"""A block that skips what it does around its attention (a shifted window block built with shift 0:
no roll, no mask) hands the attention another input and None for the mask the reference's
attention receives. The attention, re-run on the reference's input with that mask in its None
argument (its parameter named after it, however the two signatures differ), computes right: it is
cleared, and the block is named, alone: not also an untwinned container around it, since the
block was given its twin's input and its own code made what the attention received."""

from __future__ import annotations

import torch
from torch import nn

from helpers import compare_port
from port_toys import MaskedWindowAttention

D, T = 8, 6


def _mask() -> torch.Tensor:
    return torch.triu(torch.full((T, T), -1e4), 1)


class Block(nn.Module):
    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(D), attention
        self.register_buffer("mask", _mask(), persistent=False)

    def forward(self, x):
        shifted = self.norm(x).roll((1, 1), (1, 2))
        return x + self.attn(shifted, mask=self.mask).roll(-1, 1)


class Original(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.pre, self.block = nn.Linear(4, D), nn.Linear(D, D), Block(MaskedWindowAttention(D))
        self.down, self.head = nn.Linear(D, D), nn.Linear(D, 2)

    def forward(self, x):
        return self.head(self.down(self.block(self.pre(self.embed(x)))))


class PortAttention(MaskedWindowAttention):
    """The port's attention: ``(hidden_states, attention_mask, output_attentions)``, all positional."""

    def forward(self, hidden_states, attention_mask=None, output_attentions=False):
        return super().forward(hidden_states, attention_mask)


class PortBlock(Block):
    def __init__(self) -> None:
        super().__init__(PortAttention(D))
        self.shift = 1

    def forward(self, x):
        shifted = self.norm(x).roll((self.shift, self.shift), (1, 2))
        mask = self.mask if self.shift else None
        return x + self.attn(shifted, mask, False).roll(-self.shift, 1)


class Stage(nn.Module):
    """A container the original does not have (layers around the block): no twin, code of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.pre, self.layer, self.down = nn.Linear(D, D), PortBlock(), nn.Linear(D, D)

    def forward(self, x):
        return self.down(self.layer(self.pre(x)))


class Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.stage, self.classifier = nn.Linear(4, D), Stage(), nn.Linear(D, 2)

    def forward(self, x):
        return self.classifier(self.stage(self.embed(x)))


def _without_shift():
    torch.manual_seed(0)
    x = torch.randn(2, T, 4, dtype=torch.float64)
    return compare_port(Port().double().eval(), Original().double().eval(), x,
                        lambda port: setattr(port.stage.layer, "shift", 0))


def test_block_that_skips_its_shift_and_mask_is_the_culprit_not_its_attention():
    report = _without_shift()
    assert not report.passed
    assert report.culprit == "stage.layer", \
        f"culprit {report.culprit}, expected stage.layer (its attention got None for the mask)\n{report.format()}"


def test_block_that_skips_its_shift_is_the_only_origin_not_the_untwinned_stage_around_it():
    report = _without_shift()
    assert report.introduced == ["stage.layer"], f"introduced {report.introduced}, expected ['stage.layer'] alone"
