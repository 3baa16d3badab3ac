"""A port that lost a squeeze-excitation (its slot holds an ``Identity``): the conv-norm-activation
``Sequential`` before the slot is guessed, by shape, for the reference's excitation and fails, and
it returns the excitation's input. But it returns what its norm and activation, paired already
with the reference's norm-activation module, return: it only wraps that twin, and is not the module
that stopped short. The block holding the empty slot is named."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import compare_port
from port_toys import FunctionalNormAct

C = 8


class Excite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(C, 4, 1), nn.Conv2d(4, C, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))


class Original(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_dw, self.bn2 = nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False), FunctionalNormAct(C, nn.functional.hardswish)
        self.se, self.conv_pwl = Excite(), nn.Conv2d(C, C, 1)

    def forward(self, x):
        return self.conv_pwl(self.se(self.bn2(self.conv_dw(x))))


class Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Sequential(nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False), nn.BatchNorm2d(C), nn.Hardswish()),
            Excite(),
            nn.Conv2d(C, C, 1))

    def forward(self, x):
        return self.block(x)


def compared(change=lambda port: None):
    reference = Original()
    harness.randomize_(reference, torch.Generator().manual_seed(1))
    x = torch.randn(2, C, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return compare_port(Port().double().eval(), reference.double().eval(), x, change)


def _drop_excitation(port: Port) -> None:
    port.block[1] = nn.Identity()


def test_the_port_with_its_excitation_passes():
    report = compared()
    assert report.passed, report.format()


def test_a_dropped_excitation_does_not_blame_the_conv_norm_activation_before_it():
    report = compared(_drop_excitation)
    assert not report.passed and report.culprit == "block", report.format()


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(C, C)

    def forward(self, x):
        return x + torch.tanh(self.fc(x))


class Encoder(nn.Module):
    """A backbone with a forward of its own: two layers, then its final norm."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Residual(), Residual()])
        self.final = nn.LayerNorm(C)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.final(x)


class Flat(nn.Module):
    """The original: the same layers and norm in its root's code."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Residual(), Residual()])
        self.norm, self.head = nn.LayerNorm(C), nn.Linear(C, 3)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class WithBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.classifier = Encoder(), nn.Linear(C, 3)

    def forward(self, x):
        return self.classifier(self.backbone(x))


def test_a_backbone_whose_final_norm_is_gone_is_blamed_though_it_returns_its_last_layer():
    reference = Flat()
    harness.randomize_(reference, torch.Generator().manual_seed(1))
    x = torch.randn(2, 5, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    report = compare_port(WithBackbone().double().eval(), reference.double().eval(), x,
                          lambda port: setattr(port.backbone, "final", nn.Identity()))
    assert not report.passed and report.culprit in ("backbone", "backbone.final"), report.format()
