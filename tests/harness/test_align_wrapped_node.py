"""Twins among nested modules holding the same tensors, when one of them only wraps another: a
port's ``Tree`` calls its ``Node`` on its input and returns the node's result, where the node
joins its branches and merges them; the original's level does all of that in one module. The
tree computes nothing of its own, the node does: the node is the level's twin, so an error in the
node's code is blamed on the node. A wrapper that should compute (a residual it lost) stays the
twin of a reference module that computes after its last call."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import harness
from helpers import transferred
from port_toys import AggregationNet, TreeNet, feature_maps, randomized


def _twins(report) -> dict[str, str]:
    return {row.candidate: row.reference for row in report.rows}


def test_a_tree_handing_on_its_node_result_leaves_the_twin_to_the_node():
    candidate, reference, weights = transferred(randomized(TreeNet(), 1), randomized(AggregationNet(), 2), feature_maps())
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    assert report.passed and _twins(report).get("tree.node") == "level", report.format(table=True)


def test_branches_joined_in_another_order_are_blamed_on_the_node_that_joins_them():
    candidate, reference, weights = transferred(randomized(TreeNet(swapped=True), 1), randomized(AggregationNet(), 2),
                                                feature_maps())
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    assert (report.passed, report.culprit) == (False, "tree.node"), report.format()


class _Branch(nn.Module):
    """A conv, a norm and a ReLU in its own code."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class _Residual(nn.Module):
    def __init__(self, residual: bool = True) -> None:
        super().__init__()
        self.branch, self.residual = _Branch(), residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x) if self.residual else self.branch(x)


class _FlatResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.bn(self.conv(x)))


def test_a_wrapper_that_lost_its_residual_around_a_branch_of_its_own_is_blamed():
    candidate = randomized(nn.Sequential(_Residual(residual=False), nn.Conv2d(8, 4, 1)), 1)
    reference = randomized(nn.Sequential(_FlatResidual(), nn.Conv2d(8, 4, 1)), 2)
    candidate, reference, weights = transferred(candidate, reference, feature_maps())
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    assert (report.passed, report.culprit) == (False, "0"), report.format()
