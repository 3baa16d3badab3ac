"""An activation appended to a port's feed-forward ``Sequential``: the feed-forward ends with a call
the reference applies neither inside its twin nor after it (nothing the reference runs next
receives that value). It is the port's extra operation, so the feed-forward's row is measured with
it, fails, and the appended activation is named, not the block around it."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import compare_port

D = 16


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.mlp = nn.LayerNorm(D), Mlp()

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class Original(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(Block(), Block())
        self.norm = nn.LayerNorm(D)

    def forward(self, x):
        return self.norm(self.blocks(x))


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(D)
        self.ffn = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))

    def forward(self, x):
        return x + self.ffn(self.ln(x))


class Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Layer(), Layer()])
        self.final_ln = nn.LayerNorm(D)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.final_ln(x)


def compared():
    reference = Original()
    harness.randomize_(reference, torch.Generator().manual_seed(1))
    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    report = compare_port(Port().double().eval(), reference.double().eval(), x,
                          lambda port: port.layers[1].ffn.append(nn.GELU()))
    return report


def test_an_activation_appended_to_a_feed_forward_is_named():
    report = compared()
    assert not report.passed and report.culprit == "layers.1.ffn.3", report.format()


def test_the_feed_forward_with_the_appended_activation_fails_its_row():
    report = compared()
    row = next(r for r in report.rows if r.candidate == "layers.1.ffn")
    assert not row.passed, f"layers.1.ffn's output includes the extra GELU, yet its row passes\n{report.format()}"
