"""Two paths, each fed one half of the input, whose norms apply their activation inside in the
original (timm's ``BatchNormAct2d``) and in the caller's code in the port (``F.relu`` after a
``BatchNorm2d``). When the port hands each path the other half, every norm downstream fails and,
re-run on its twin's inputs, differs from it only by the activation the port applies right after
it: the norms are compared before that activation, cleared, and the module that split the input
is blamed, not a norm said to lack its ReLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import compare_port, trained_statistics_
from port_toys import NormAct

HALF, C = 4, 6


class _OriginalPath(nn.Module):
    def __init__(self, dilation: int) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(HALF, C, 3, padding=dilation, dilation=dilation, bias=False), NormAct(C, nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class _OriginalSplit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.paths = nn.ModuleList([_OriginalPath(1), _OriginalPath(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, HALF, 1)
        return self.paths[0](a) + self.paths[1](b)


class _PortPath(nn.Module):
    def __init__(self, dilation: int) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(HALF, C, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class _PortSplit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.small, self.large, self.swapped = _PortPath(1), _PortPath(2), False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, :HALF], x[:, HALF:]
        if self.swapped:
            a, b = b, a
        return self.small(a) + self.large(b)


class _Model(nn.Module):
    def __init__(self, split: type[nn.Module]) -> None:
        super().__init__()
        self.stem, self.split, self.head = nn.Conv2d(3, 2 * HALF, 3, padding=1), split(), nn.Conv2d(C, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.split(self.stem(x))).mean((2, 3))


def _swapped() -> harness.Report:
    original = _Model(_OriginalSplit).double().eval()
    harness.randomize_(original, torch.Generator().manual_seed(0))
    trained_statistics_(original)
    image = torch.randn(1, 3, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return compare_port(_Model(_PortSplit).double().eval(), original, image,
                        lambda port: setattr(port.split, "swapped", True))


def test_paths_handed_each_others_half_blame_the_module_that_split_the_input() -> None:
    report = _swapped()
    assert report.culprit == "split", f"culprit {report.culprit!r}, expected 'split'\n{report.format()}"


def test_the_norms_of_those_paths_are_cleared_before_the_activation_the_port_applies_after_them() -> None:
    report = _swapped()
    blamed = [name for name in report.introduced if name.endswith(".bn")]
    assert not blamed, f"{blamed} blamed: compared after a ReLU the port applies in its caller's code"
