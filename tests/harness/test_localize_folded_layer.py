"""Where a port's layer that folds a conv, its norm and its ReLU into one module (no twin) stands
among failing calls.

A unit that splits its channels into halves and runs its branch on the wrong one: the branch's
first layer, a conv with its batch norm folded into a scale and shift of the port's own (no twin),
hands on the input it was given, and its conv, re-run on its twin's input, agrees. That layer holds
tensors of its own, yet it did not leave out what it does with them: it was handed another value
than the last agreeing one, which the unit's own code chose. The unit is named, not the layer.

A folded layer ending its branch that skips its ReLU returns what the original's ReLU is given:
nothing after it fails inside the branch, and it is named, not the branch."""

from __future__ import annotations

import torch
from torch import nn

from helpers import compare_port, trained_statistics_
from port_toys import FoldedConvRelu, randomized

C = 8


class Unit(nn.Module):
    """The original: its branch's conv, norm and ReLU are modules of their own."""

    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(C // 2, C // 2, 1, bias=False), nn.BatchNorm2d(C // 2), nn.ReLU(),
                                    nn.Conv2d(C // 2, C // 2, 3, padding=1, bias=False),
                                    nn.Conv2d(C // 2, C // 2, 1, bias=False), nn.BatchNorm2d(C // 2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, changed = x.chunk(2, 1)
        return torch.cat([kept, self.branch(changed)], 1)


class PortUnit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Sequential(FoldedConvRelu(C // 2), nn.Conv2d(C // 2, C // 2, 3, padding=1, bias=False),
                                    FoldedConvRelu(C // 2))
        self.swapped = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, changed = x[:, : C // 2], x[:, C // 2:]
        if self.swapped:
            kept, changed = changed, kept
        return torch.cat([kept, self.branch(changed)], 1)


class Net(nn.Module):
    def __init__(self, unit: type) -> None:
        super().__init__()
        self.stem, self.units, self.head = nn.Conv2d(3, C, 3, padding=1), nn.Sequential(unit(), unit()), nn.Conv2d(C, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.units(self.stem(x)))


def _report(change=lambda port: None):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    reference = trained_statistics_(randomized(Net(Unit), seed=5))
    return compare_port(Net(PortUnit).double().eval(), reference, x, change)


def test_a_port_folding_its_branch_norm_passes():
    report = _report()
    assert report.passed, f"expected the right port to pass, got:\n{report.format()}"


def test_a_unit_running_its_branch_on_the_other_half_is_named_not_the_branchs_folded_layer():
    report = _report(lambda port: setattr(port.units[1], "swapped", True))
    assert report.culprit == "units.1", \
        f"culprit {report.culprit}, expected units.1 (it hands its branch the kept half)\n{report.format()}"


def test_a_folded_layer_ending_its_branch_that_skips_its_relu_is_named_not_the_branch():
    report = _report(lambda port: setattr(port.units[0].branch[2], "relu", False))
    assert report.culprit == "units.0.branch.2", \
        f"culprit {report.culprit}, expected units.0.branch.2 (it returns what the original's ReLU is " \
        f"given)\n{report.format()}"
