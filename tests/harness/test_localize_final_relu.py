"""A residual block of the port's own that forgets the ReLU after its add, against torchvision's
ResNet, whose block applies it last with the ReLU module it also calls after its first norm: measured
before that ReLU the twins agree, yet given its twin's inputs no later call and no call around the
port's block ever sees the ReLU's result. Nothing applies it, so the block is blamed with the ReLU
named, not the next block or the model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from helpers import compare_port, trained_statistics_


class _ConvNorm(nn.Module):
    """A conv and its norm, with the ReLU after them when ``act``: the port's unit."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.norm, self.act = nn.BatchNorm2d(cout), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        return F.relu(y) if self.act else y


class _Block(nn.Module):
    """The port's block: its shortcut first; ``final_relu=False`` forgets the ReLU after the add."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.cn1, self.cn2 = _ConvNorm(cin, cout, 3, stride), _ConvNorm(cout, cout, 3, act=False)
        self.shortcut = _ConvNorm(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout else None
        self.final_relu = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        y = self.cn2(self.cn1(x)) + shortcut
        return F.relu(y) if self.final_relu else y


class _Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _ConvNorm(3, 64, 7, 2)
        widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        self.stages = nn.ModuleList(nn.Sequential(_Block(*w)) for w in widths)
        self.fc = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.stem(x), 3, 2, 1)
        for stage in self.stages:
            x = stage(x)
        return self.fc(x.mean((2, 3)))


def _report(final_relu: bool):
    torch.manual_seed(0)
    original = trained_statistics_(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10).double().eval())
    with torch.no_grad():  # norms of their own, as trained: weights near one, biases near zero
        for name, t in original.named_parameters():
            if "bn" in name or "downsample.1" in name:
                t.add_(0.2 * torch.randn_like(t))
    image = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return compare_port(_Port().double().eval(), original, image,
                        lambda port: setattr(port.stages[2][0], "final_relu", final_relu))


def test_a_port_applying_the_final_relu_in_its_own_code_passes():
    report = _report(final_relu=True)
    assert report.passed, report.format()


def test_a_block_that_forgets_the_relu_after_its_add_is_blamed():
    report = _report(final_relu=False)
    assert report.culprit == "stages.2.0", report.format()


def test_a_block_that_forgets_the_relu_after_its_add_is_said_to_miss_it():
    report = _report(final_relu=False)
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert why.startswith("stages.2.0: relu missing"), f"why: {why or '(none)'}\n{report.format()}"
