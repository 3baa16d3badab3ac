"""A relative position bias built by a module of the port's own from its table alone (as
transformers' BEiT builds it and hands it to its attention), where the original builds it inside
its attention. The bias module runs before the last agreeing call (the block's norm), so the error
enters only where the attention reads its value: the module that built the wrong bias is named,
not the attention that adds what it is handed."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import compare_port, seeded

D, N, H = 8, 4, 2


def _positions() -> torch.Tensor:
    ids = torch.arange(N)
    return ids[:, None] - ids[None, :] + N - 1  # the relative position of each pair of tokens


class OriginalAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.table = nn.Parameter(torch.zeros(2 * N - 1, H))
        self.register_buffer("index", _positions(), persistent=False)

    def forward(self, x):
        q, k, v = self.qkv(x).reshape(len(x), N, 3, H, D // H).permute(2, 0, 3, 1, 4)
        bias = self.table[self.index].permute(2, 0, 1)
        scores = (q @ k.transpose(-2, -1)) * (D // H) ** -0.5 + bias
        return self.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(len(x), N, D))


class Original(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.attn, self.head = nn.LayerNorm(D), OriginalAttention(), nn.Linear(D, 3)

    def forward(self, x):
        x = x + self.attn(self.norm(x))
        return self.head(x.mean(1))


class PositionBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(2 * N - 1, H))
        self.register_buffer("index", _positions(), persistent=False)
        self.transposed = False  # the bug: the bias of (i, j) given to (j, i)

    def forward(self):
        bias = self.table[self.index].permute(2, 0, 1)
        return bias.transpose(-2, -1) if self.transposed else bias


class PortAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.output = nn.Linear(D, D)

    def heads(self, t):
        return t.reshape(len(t), N, H, D // H).transpose(1, 2)

    def forward(self, x, bias):
        q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
        scores = (q @ k.transpose(-2, -1)) * (D // H) ** -0.5 + bias
        return self.output((scores.softmax(-1) @ v).transpose(1, 2).reshape(len(x), N, D))


class Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.position_bias, self.norm = PositionBias(), nn.LayerNorm(D)
        self.attention, self.head = PortAttention(), nn.Linear(D, 3)

    def forward(self, x):
        bias = self.position_bias()
        x = x + self.attention(self.norm(x), bias)
        return self.head(x.mean(1))


def _compared(transposed: bool) -> harness.ParityReport:
    x = torch.randn(2, N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return compare_port(Port().double().eval(), seeded(Original(), 0), x,
                        lambda port: setattr(port.position_bias, "transposed", transposed))


def test_a_bias_module_returning_its_bias_transposed_is_named_not_the_attention_reading_it() -> None:
    report = _compared(transposed=True)
    assert not report.passed and report.culprit == "position_bias", \
        f"culprit {report.culprit}: position_bias built the transposed bias, the attention only added it\n" \
        f"{report.format()}"


def test_an_honest_port_building_its_bias_in_a_module_of_its_own_passes() -> None:
    report = _compared(transposed=False)
    assert report.passed, report.format()
