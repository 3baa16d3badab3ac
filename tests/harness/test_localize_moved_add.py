"""A position add moved from the embeddings to after the first layer: two origins. The embeddings
returns its projection's value as it is, though it holds the table, where the first layer's twin
is handed that value plus the table: it left the add out, and is the first origin (the culprit);
the layer adding the table is the second."""

from __future__ import annotations

import torch
from torch import nn

from helpers import compare_port, inject_forward

D, N = 8, 5


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Linear(D, D)

    def forward(self, x):
        return x + torch.tanh(self.mlp(x))


class Original(nn.Module):
    """The position table added in the root's own code."""

    def __init__(self) -> None:
        super().__init__()
        self.patch, self.pos = nn.Linear(4, D), nn.Parameter(torch.randn(1, N, D))
        self.blocks, self.head = nn.ModuleList(Block() for _ in range(2)), nn.Linear(D, 3)

    def forward(self, x):
        x = self.patch(x) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


class Embeddings(nn.Module):
    """The port's: the table its own, added in its own code."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.table = nn.Linear(4, D), nn.Parameter(torch.zeros(1, N, D))

    def forward(self, x):
        return self.proj(x) + self.table


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(D, D)

    def forward(self, x):
        return x + torch.tanh(self.fc(x))


class Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embeddings, self.layers, self.classifier = Embeddings(), nn.ModuleList(Layer() for _ in range(2)), \
            nn.Linear(D, 3)

    def forward(self, x):
        x = self.embeddings(x)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(x.mean(1))


def _moved(port):
    table = port.embeddings.table
    inject_forward(port.embeddings, lambda self, x: self.proj(x))
    inject_forward(port.layers[0], lambda self, x: x + torch.tanh(self.fc(x)) + table)


def _report():
    torch.manual_seed(0)
    x = torch.randn(2, N, 4, dtype=torch.float64)
    return compare_port(Port().double().eval(), Original().double().eval(), x, _moved)


def test_embeddings_that_no_longer_add_their_table_are_the_culprit():
    report = _report()
    assert not report.passed
    assert report.culprit == "embeddings", f"culprit {report.culprit}, expected embeddings\n{report.format()}"


def test_the_layer_that_adds_the_table_is_the_second_origin():
    report = _report()
    assert report.introduced == ["embeddings", "layers.0"], \
        f"introduced {report.introduced}, expected ['embeddings', 'layers.0']"
