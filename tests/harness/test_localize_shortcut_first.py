"""A residual block whose port computes the shortcut before the main branch, with its norms written
as ``F.batch_norm`` over parameters of their own: the order of use pairs the main branch's norm with
the shortcut's at first, and the map's check must undo that by exchanging weights, not take the
Sequential around the norm for an origin of its own."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import harness
from port_toys import randomized


class Norm(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.register_buffer("rm", torch.zeros(c))
        self.register_buffer("rv", torch.ones(c))

    def forward(self, x):
        return F.batch_norm(x, self.rm, self.rv, self.w, self.b, False, 0.0, 1e-5)


class ShortcutFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1, bias=False), Norm(8), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, bias=False), Norm(8))
        self.down = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(4, 8, 1, bias=False), Norm(8))

    def forward(self, x):
        shortcut = self.down(x)
        return F.relu(self.c2(self.c1(x)) + shortcut)


class MainFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(4, 8, 1, bias=False), nn.BatchNorm2d(8))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.downsample(x))


def test_a_port_computing_its_shortcut_first_is_mapped_and_passes():
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = randomized(MainFirst(), 2)
    with torch.no_grad():  # statistics of a trained model, so that the norms' tensors tell them apart
        for name, buffer in reference.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    candidate = ShortcutFirst().double().eval()
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, x, weights=weights)
    assert weights.verified and report.passed, f"{weights}\n{report.format()}"
