"""Twins tied by their weights stay twins when an error changes the size of their output (a
padding, a stride or a pool window set otherwise): the module making the map another size is the
culprit, with the setting named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness
from helpers import transferred
from port_toys import randomized


class Sequenced(nn.Module):
    """The port: one Sequential, layers by position."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).permute(0, 2, 3, 1))          # (B, h, w, 4): the map's size shows


class Named(nn.Module):
    """The original: the same layers as named attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.norm, self.pool = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.MaxPool2d(3, 2, 1)
        self.conv, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.norm(self.stem(x)).relu())
        return self.fc(self.conv(x).relu().permute(0, 2, 3, 1))         # (B, h, w, 4)


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize(("layer", "setting", "value"), [(0, "padding", (0, 0)), (4, "stride", (2, 2)),
                                                         (3, "kernel_size", 2)])
def test_a_setting_that_resizes_the_map_is_blamed_on_its_layer_and_named(layer, setting, value):
    candidate, reference, weights = transferred(randomized(Sequenced(), 1), randomized(Named(), 2), _images())
    setattr(candidate.features[layer], setting, value)
    report = harness.compare(candidate, reference, _images(), weights=weights)
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert (report.culprit, setting in why) == (f"features.{layer}", True), report.format()


def test_twins_whose_maps_differ_in_size_stay_aligned_rows():
    candidate, reference, weights = transferred(randomized(Sequenced(), 1), randomized(Named(), 2), _images())
    candidate.features[0].padding = (0, 0)
    report = harness.compare(candidate, reference, _images(), weights=weights)
    twins = {row.candidate: row.reference for row in report.rows}
    assert (twins.get("features.0"), twins.get("features.4")) == ("stem", "conv"), report.format()
