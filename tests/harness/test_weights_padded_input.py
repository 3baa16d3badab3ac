"""Models that differ before a layer's weights are read: a port padding its map "same" (one row and
column more on the right, as TF does) against symmetric padding. The layer fed a map of another
size is a difference of the models, not of the map: verification says so without trying other
choices of weights, each of which costs a run of both models."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import harness
import harness.api
from port_toys import randomized

C = 4


class Symmetric(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, C, 3, 2, padding=1), nn.Conv2d(C, C, 1), nn.Conv2d(C, C, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(self.stem(x))))


class SamePadded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.one, self.two = nn.Conv2d(3, C, 3, 2), nn.Conv2d(C, C, 1), nn.Conv2d(C, C, 1)

    def forward(self, x):
        x = self.conv(F.pad(x, (0, 1, 0, 1)))  # TF "same" for stride 2 on an even map
        return self.two(torch.relu(self.one(x)))


def _images() -> torch.Tensor:
    return torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _mapped(monkeypatch) -> tuple[harness.WeightMap, int]:
    runs = []
    compare = harness.api.compare
    monkeypatch.setattr(harness.api, "compare", lambda *a, **k: runs.append(1) or compare(*a, **k))
    weights = harness.map_weights(SamePadded().double().eval(), randomized(Symmetric(), 1), _images())
    return weights, len(runs)


def test_a_layer_fed_a_map_of_another_size_leaves_the_map_unverified(monkeypatch):
    weights, _ = _mapped(monkeypatch)
    assert not weights.verified and [c["module"] for c in weights.conflicts] == ["conv"], str(weights)


def test_a_layer_fed_a_map_of_another_size_tries_no_other_weights(monkeypatch):
    _, runs = _mapped(monkeypatch)
    # one run to check the map, one to diagnose the disagreement: no alternative is tried
    assert runs == 2, f"{runs} comparisons ran while verifying; a map of another size needs no alternative"
