"""A culprit holding no weights (a pool) that alignment leaves without a twin, in a comparison of
features through ``reference_call``: it is diagnosed against the reference module the weights
around it come from, as that call runs it, and the why names the setting that differs."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import findings_text
from port_toys import randomized


class Original(nn.Module):
    """A stem of modules held by the root, then a stage; ``features`` is what is compared."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8)
        self.act1, self.maxpool = nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        self.stage = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def features(self, x):
        return self.stage(self.maxpool(self.act1(self.bn1(self.conv1(x)))))

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class Port(nn.Module):
    def __init__(self, padding: int = 1) -> None:
        super().__init__()
        self.embedder = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, padding))
        self.encoder = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())

    def forward(self, x):
        return self.encoder(self.embedder(x))


FEATURES = dict(reference_call=lambda model, call: model.features(*call.args))


def test_a_pool_padding_in_an_untwinned_stem_is_explained():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    reference = randomized(Original(), 1)
    weights = harness.map_weights(Port().double().eval(), reference, x, **FEATURES)
    port = Port(padding=0).double().eval()
    weights.transfer(reference, port)
    report = harness.compare(port, reference, x, weights=weights, **FEATURES)
    assert report.culprit == "embedder.3", report.format()
    assert report.diagnosis and "max_pool2d padding" in report.diagnosis[0]["text"], findings_text(report.diagnosis)
