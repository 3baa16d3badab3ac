"""Verification spends no comparisons where no choice of weights can help: a stem conv handed an
image padded by hand (TensorFlow "SAME" against symmetric padding) receives another size than its
twin, whatever the model's root receives; and an exchange refused in one block is not tried again
in the blocks built alike."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import harness
import harness.api as api
from harness.weights import _exchange_alike


class SameStem(nn.Module):
    """A stride-2 conv padded by hand on the right and bottom only, as TensorFlow's "SAME" pads."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def net(stem: nn.Module) -> nn.Module:
    return nn.Sequential(stem, nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
                         nn.ReLU(), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)).double().eval()


def test_a_stem_handed_an_image_padded_by_hand_costs_the_map_no_alternatives(monkeypatch):
    candidate, reference = net(nn.Conv2d(3, 8, 3, stride=2, padding=1)), net(SameStem())
    harness.randomize_(reference, torch.Generator().manual_seed(2))
    calls = []
    compare = api.compare
    monkeypatch.setattr(api, "compare", lambda *a, **k: calls.append(1) or compare(*a, **k))
    weights = harness.map_weights(candidate, reference, torch.randn(1, 3, 8, 8, dtype=torch.float64))
    assert (weights.verified, [c["module"] for c in weights.conflicts], len(calls)) == (False, ["0"], 2), \
        f"{len(calls)} comparisons\n{weights}"


def test_an_exchange_refused_in_one_block_reads_alike_in_a_block_built_alike():
    refused = _exchange_alike(("features.3.conv.", "0.1", "1.1"), "features.3.conv.1.0")
    assert refused == _exchange_alike(("features.14.conv.", "0.1", "1.1"), "features.14.conv.1.0") \
        != _exchange_alike(("features.14.conv.", "0.1", "2.1"), "features.14.conv.1.0"), refused


class SameConv(nn.Conv2d):
    """A stride-2 conv storing no padding and padding right and bottom in its own forward, as
    TensorFlow's "SAME" pads (timm's ``Conv2dSame``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (0, 1, 0, 1)))


def downsampling(conv: type[nn.Conv2d], **padding) -> nn.Module:
    """Three stride-2 convs, each after a conv and a norm that read the map as it comes."""
    layers = []
    for _ in range(3):
        layers += [nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), conv(8, 8, 3, stride=2, **padding)]
    return nn.Sequential(nn.Conv2d(3, 8, 1), *layers).double().eval()


def test_convs_padding_in_their_own_forward_where_no_reference_conv_pads_alike_cost_the_map_no_alternatives(monkeypatch):
    candidate, reference = downsampling(nn.Conv2d, padding=1), downsampling(SameConv)
    harness.randomize_(reference, torch.Generator().manual_seed(2))
    calls = []
    compare = api.compare
    monkeypatch.setattr(api, "compare", lambda *a, **k: calls.append(1) or compare(*a, **k))
    weights = harness.map_weights(candidate, reference, torch.randn(1, 3, 16, 16, dtype=torch.float64))
    assert (weights.verified, [c["module"] for c in weights.conflicts][:1], len(calls)) == (False, ["4"], 2), \
        f"{len(calls)} comparisons\n{weights}"
