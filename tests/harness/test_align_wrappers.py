"""Twins among modules holding the same tensors, when one side wraps a block in a one-block
``nn.Sequential`` (timm's ``blocks.0``) and the other adds the residual around an inner Sequential
(torchvision's ``InvertedResidual.block``): the wrapper computes nothing itself, so the block with
the residual is the twin of the module adding the residual, not of the Sequential without it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness
from helpers import transferred
from port_toys import images, randomized

C = 4


class InvertedResidual(nn.Module):
    """torchvision's layout: the branch is a Sequential, the residual is added around it."""

    def __init__(self, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.block = nn.Sequential(nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False), nn.BatchNorm2d(C), nn.ReLU(),
                                   nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class SeparableConv(nn.Module):
    """timm's layout: one module with its layers as attributes and the residual added inside."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_dw, self.bn1 = nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False), nn.BatchNorm2d(C)
        self.conv_pw, self.bn2 = nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv_pw(self.bn1(self.conv_dw(x)).relu()))


class TorchvisionStyle(nn.Module):
    def __init__(self, residual: bool = True) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, C, 3, padding=1), InvertedResidual(residual))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class TimmStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, C, 3, padding=1)
        self.blocks = nn.Sequential(nn.Sequential(SeparableConv()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.conv_stem(x))


@pytest.fixture
def port():
    return transferred(randomized(TorchvisionStyle(), 1), randomized(TimmStyle(), 2), images())


def test_a_block_adding_its_residual_around_a_sequential_verifies_against_a_wrapped_block(port):
    _, _, weights = port
    assert weights.verified, str(weights)


def test_a_block_adding_its_residual_around_a_sequential_passes_against_a_wrapped_block(port):
    candidate, reference, weights = port
    report = harness.compare(candidate, reference, images(), weights=weights)
    assert report.passed, report.format()


def test_a_weight_error_inside_the_branch_is_blamed_on_its_layer(port):
    candidate, reference, weights = port
    with torch.no_grad():
        candidate.features[1].block[3].weight[0, 0] += 1e-3
    report = harness.compare(candidate, reference, images(), weights=weights)
    assert (report.passed, report.culprit) == (False, "features.1.block.3"), report.format()


def test_a_dropped_residual_is_blamed_on_the_block_that_should_add_it(port):
    candidate, reference, weights = port
    broken = TorchvisionStyle(residual=False).double().eval()
    broken.load_state_dict(candidate.state_dict())
    report = harness.compare(broken, reference, images(), weights=weights)
    assert (report.passed, report.culprit) == (False, "features.1"), report.format()
