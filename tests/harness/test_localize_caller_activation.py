"""A norm that ends with its activation (timm's ``BatchNormAct2d``) twinned with a plain norm whose
activation the reference applies in its root's own code and hands straight to a functional pool
(torchvision's DenseNet: ``F.relu`` then ``F.adaptive_avg_pool2d``). No module of the reference ever
receives the activated map, yet the reference computes it: its root's ops show it. So the honest
pair passes, and an activation the reference truly never applies is still the port's error."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import compare_port, trained_statistics_
from port_toys import NormAct

C = 6


class _PoolInRoot(nn.Module):
    """torchvision's layout: plain norm last in ``features``; ReLU and pool in the root's code."""

    def __init__(self, activate: bool = True) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C))
        self.classifier = nn.Linear(C, 4)
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        out = F.relu(out) if self.activate else out
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class _ActInNorm(nn.Module):
    """timm's layout: the ReLU is the last norm's child; the root only pools."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, C, 3, padding=1), NormAct(C, nn.ReLU()))
        self.classifier = nn.Linear(C, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def _compared(activate: bool) -> harness.ParityReport:
    reference = _PoolInRoot(activate).double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    image = torch.randn(2, 3, 7, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return compare_port(_ActInNorm().double().eval(), trained_statistics_(reference), image)


def test_an_activation_the_reference_applies_in_its_root_before_a_functional_pool_passes() -> None:
    report = _compared(activate=True)
    assert report.passed, f"an honest pair fails: the root's F.relu is not seen as the norm's ReLU\n{report.format()}"


def test_an_activation_the_reference_never_applies_is_named() -> None:
    report = _compared(activate=False)
    assert not report.passed and report.culprit == "features.1.act", \
        f"culprit {report.culprit}: the ReLU ending the port's norm, which the reference never applies, is its error\n" \
        f"{report.format()}"
