"""A convolution padding by reflection (``padding_mode='reflect'``: ``F.pad(mode='reflect')`` then a
convolution of no padding) against one padding with zeros is named by its padding mode."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import findings_text


def test_a_reflecting_padding_mode_is_named_as_the_padding_mode():
    reference = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    candidate = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                              nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")).double().eval()
    x = torch.randn(1, 4, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, x, weights=weights)
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    said = "conv2d padding_mode 'reflect' in the candidate, 'zeros' in the reference"
    assert report.culprit == "2" and said in why, \
        f"culprit {report.culprit}; the padding mode is not named first:\n{findings_text(report.diagnosis)}"
