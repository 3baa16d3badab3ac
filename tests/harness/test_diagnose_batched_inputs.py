"""A port running two inputs through one encoder in a single batched call (``torch.cat([a, b], 0)``,
then ``chunk``) against a reference calling it once per input computes the same: the batched call
is the reference's calls joined, and a bug after it is named, never the batching."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import harness
from helpers import findings_text, trained_statistics_


def _encoder() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())


class _Reference(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc, self.head = _encoder(), nn.Sequential(nn.Conv2d(32, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 2, 1))

    def forward(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.enc(a), self.enc(b)], 1)) * mask


class _Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.bug = _encoder(), ""
        self.h1_w, self.h1_b = nn.Parameter(torch.zeros(16, 32, 3, 3)), nn.Parameter(torch.zeros(16))
        self.h2_w, self.h2_b = nn.Parameter(torch.zeros(2, 16)), nn.Parameter(torch.zeros(2))

    def forward(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        fa, fb = self.backbone(torch.cat([a, b], 0)).chunk(2, 0)
        joined = torch.cat([fb, fa] if self.bug == "swap" else [fa, fb], 1)
        z = F.relu(F.conv2d(joined, self.h1_w, self.h1_b, padding=1))
        y = torch.einsum("bchw,oc->bohw", z, self.h2_w) + self.h2_b[:, None, None]
        return y if self.bug == "nomask" else y * mask


@pytest.mark.parametrize("bug, named", [("swap", "in another order"), ("nomask", "mul missing in the candidate")])
def test_a_bug_after_a_batched_encoder_is_named_not_the_batching(bug, named):
    reference = _Reference().double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    trained_statistics_(reference)
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=g),
         torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=g),
         (torch.rand(1, 1, 8, 8, generator=g) > 0.3).double())
    candidate = _Port().double().eval()
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    candidate = copy.deepcopy(candidate)
    candidate.bug = bug
    report = harness.compare(candidate, reference, x, weights=weights)
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert named in why and "cat(dim=0)" not in findings_text(report.diagnosis), \
        f"expected '{named}' first, no word of the batching:\n{findings_text(report.diagnosis)}"
