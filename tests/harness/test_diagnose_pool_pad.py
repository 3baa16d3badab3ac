"""A port writing a max pool's ``ceil_mode=True`` as a ``-inf`` pad of the last window and a floor
pool computes what the reference's pool does: the two are one pool, and a bug before it is named,
never the spelling of the pool."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import harness
from helpers import findings_text


class _Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.relu = True
        self.w1, self.b1 = nn.Parameter(torch.zeros(8, 3, 3, 3)), nn.Parameter(torch.zeros(8))
        self.w2, self.b2 = nn.Parameter(torch.zeros(8, 8)), nn.Parameter(torch.zeros(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.w1, self.b1, 2)
        x = F.relu(x) if self.relu else x
        h, w = x.shape[-2:]
        x = F.max_pool2d(F.pad(x, (0, (3 - w) % 2, 0, (3 - h) % 2), value=float("-inf")), 3, 2)
        return F.relu(F.conv2d(x, self.w2[:, :, None, None], self.b2))


def _pair() -> tuple[nn.Module, nn.Module, torch.Tensor, object]:
    reference = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                              nn.Conv2d(8, 8, 1), nn.ReLU()).double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    candidate = _Port().double().eval()
    x = torch.randn(1, 3, 29, 29, dtype=torch.float64, generator=torch.Generator().manual_seed(2))  # 14x14 pooled
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    return candidate, reference, x, weights


def test_a_relu_left_out_before_a_pool_padded_for_ceil_mode_is_named_not_the_ceil_mode():
    candidate, reference, x, weights = _pair()
    candidate.relu = False
    report = harness.compare(candidate, reference, x, weights=weights)
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert "relu missing in the candidate" in why and "ceil_mode" not in findings_text(report.diagnosis), \
        f"the missing relu is not named first, or the pool's spelling is blamed:\n{findings_text(report.diagnosis)}"
