"""A module given another tensor for one of its arguments by the code calling it: the caller is the
culprit, and the why names the argument and where each side's value comes from.

The port calls ``nn.MultiheadAttention(y, y, value)``; the original's attention reads one input."""

from __future__ import annotations

import types

import torch
from torch import nn

import harness
from helpers import transferred

D, HEADS = 16, 2


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        y = torch.softmax(q @ k.transpose(-1, -2) * (D // HEADS) ** -0.5, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, D))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(D), Attention()

    def forward(self, x):
        return x + self.attn(self.norm1(x))


class PortBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln, self.mha = nn.LayerNorm(D), nn.MultiheadAttention(D, HEADS, batch_first=True)

    def forward(self, x):
        y = self.ln(x)
        return x + self.mha(y, y, y, need_weights=False)[0]


def _ported():
    torch.manual_seed(0)
    x = torch.randn(2, 5, D, dtype=torch.float64)
    original = nn.Sequential(nn.Linear(D, D), Block(), nn.Linear(D, 4)).double().eval()
    port = nn.Sequential(nn.Linear(D, D), PortBlock(), nn.Linear(D, 4)).double().eval()
    _, _, weights = transferred(port, original, x)
    return port, original, x, weights


def _give_wrong_value(block: nn.Module) -> None:
    def forward(self, x):
        y = self.ln(x)
        return x + self.mha(y, y, x, need_weights=False)[0]  # the value should be y, the normalized input

    block.forward = types.MethodType(forward, block)


def test_correct_multihead_attention_port_passes():
    port, original, x, weights = _ported()
    report = harness.compare(port, original, x, weights=weights)
    assert report.passed, report.format()


def test_block_passing_another_value_tensor_is_the_culprit_not_the_attention():
    port, original, x, weights = _ported()
    _give_wrong_value(port[1])
    report = harness.compare(port, original, x, weights=weights)
    assert report.culprit == "1", f"culprit {report.culprit}, expected the block 1, which passes x as the value\n{report.format()}"


def test_why_names_the_argument_and_both_sources():
    port, original, x, weights = _ported()
    _give_wrong_value(port[1])
    why = harness.compare(port, original, x, weights=weights).diagnosis[0]["text"]
    assert why == "1: passes the input of 1 to 1.mha as args.2; the reference's 1 passes what 1.norm1 returns to 1.attn", why


class TableAttention(Attention):
    """An attention that also reads a table of another shape, given by its caller."""

    def forward(self, x, table):
        return super().forward(x * table.cos().mean())


class InnerTableAttention(Attention):
    """The same attention building the table itself."""

    def forward(self, x):
        return super().forward(x * torch.ones(7, 3, dtype=x.dtype).cos().mean())


class TableBlock(Block):
    def __init__(self) -> None:
        super().__init__()
        self.attn = TableAttention()

    def forward(self, x):
        return x + self.attn(self.norm1(x), torch.ones(7, 3, dtype=x.dtype))


class InnerTableBlock(Block):
    def __init__(self) -> None:
        super().__init__()
        self.attn = InnerTableAttention()


def test_module_reading_an_extra_table_is_still_blamed_for_its_own_error():
    torch.manual_seed(0)
    x = torch.randn(2, 5, D, dtype=torch.float64)
    original = nn.Sequential(nn.Linear(D, D), InnerTableBlock()).double().eval()
    port = nn.Sequential(nn.Linear(D, D), TableBlock()).double().eval()
    _, _, weights = transferred(port, original, x)
    port[1].attn.forward = types.MethodType(lambda self, h, table: Attention.forward(self, h * table.cos().mean()) * 1.01,
                                            port[1].attn)
    report = harness.compare(port, original, x, weights=weights)
    assert report.culprit == "1.attn", f"culprit {report.culprit}, expected 1.attn (its own output is scaled)\n{report.format()}"
