"""A port's batch norm and the activation module after it are paired, as one, with a reference norm
that applies its activation inside: a finding about the pair's own settings names the port's
module class (``BatchNorm2d.training``), never the internal pairing."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import compare_port
from port_toys import FunctionalNormAct

C = 8


class Original(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, C, 3, padding=1), FunctionalNormAct(C), nn.Conv2d(C, 4, 1)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)))


class Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C), nn.ReLU())
        self.out = nn.Conv2d(C, 4, 1)

    def forward(self, x):
        return self.out(self.stem(x))


def test_a_norm_left_in_training_is_named_by_its_own_class():
    reference = Original()
    harness.randomize_(reference, torch.Generator().manual_seed(1))
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    report = compare_port(Port().double().eval(), reference.double().eval(), x, lambda port: port.stem[1].train())
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert "BatchNorm2d.training True in the candidate" in why, f"why: {why or '(none)'}\n{report.format()}"
