"""Branches joined in another order (``cat([right, left])`` where the reference joins ``[left,
right]``) are named by the join whose operands are exchanged, whether the candidate runs the branches
in the reference's order or the other way round, and whatever spelling the shuffle after the join
takes: no branch op is extra, no layout op of another spelling is the cause."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import compare_port, findings_text


class _Unit(nn.Module):
    """Two branches on one map, joined on the channels, then shuffled with a transpose."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
        self.right = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU())

    def shuffle(self, y: torch.Tensor) -> torch.Tensor:
        b, c, h, w = y.shape
        return y.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(torch.cat([self.left(x), self.right(x)], 1))


class _PermutingUnit(_Unit):
    """A port shuffling with reshape and permute; ``swapped`` joins [right, left], ``right_first``
    runs the right branch before the left."""

    def __init__(self, swapped: bool = False, right_first: bool = False) -> None:
        super().__init__()
        self.swapped, self.right_first = swapped, right_first

    def shuffle(self, y: torch.Tensor) -> torch.Tensor:
        b, c, h, w = y.shape
        return y.reshape(b, 2, c // 2, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.right_first:
            r = self.right(x)
            l = self.left(x)
        else:
            l, r = self.left(x), self.right(x)
        return self.shuffle(torch.cat([r, l] if self.swapped else [l, r], 1))


class _Net(nn.Module):
    def __init__(self, unit: nn.Module) -> None:
        super().__init__()
        self.stem, self.unit = nn.Conv2d(3, 4, 3, padding=1), unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit(torch.relu(self.stem(x)))


def _why(**port: bool) -> tuple[harness.Report, str]:
    reference = _Net(_Unit()).double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = compare_port(_Net(_PermutingUnit(**port)).double().eval(), reference, x)
    return report, findings_text(report.diagnosis)


EXPECTED = ("unit: cat joins the reference's operands in another order: operand 0 holds the reference's "
            "operand 1, operand 1 holds the reference's operand 0")


def test_a_port_joining_the_branches_in_the_reference_order_passes() -> None:
    report, why = _why()
    assert report.passed, f"expected the reshape/permute shuffle to pass, got:\n{why}"


def test_branches_joined_in_another_order_name_the_join() -> None:
    report, why = _why(swapped=True)
    assert report.culprit == "unit", f"expected the culprit unit, got {report.culprit}"
    assert EXPECTED in why.splitlines()[0], f"expected the cat's operands exchanged, got:\n{why}"


def test_branches_run_and_joined_in_another_order_are_no_extra_ops() -> None:
    report, why = _why(swapped=True, right_first=True)
    assert report.culprit == "unit", f"expected the culprit unit, got {report.culprit}"
    assert EXPECTED in why.splitlines()[0], f"expected the cat's operands exchanged, not extra ops, got:\n{why}"


class _UnshuffledUnit(_PermutingUnit):
    """A port that leaves the channel shuffle out."""

    def shuffle(self, y: torch.Tensor) -> torch.Tensor:
        return y


def test_a_shuffle_left_out_is_named_as_its_missing_reshape_not_as_values_reordered() -> None:
    reference = _Net(_Unit()).double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = compare_port(_Net(_UnshuffledUnit()).double().eval(), reference, x)
    first = report.diagnosis[0] if report.diagnosis else {}
    assert (first.get("kind"), first.get("op")) == ("missing_op", "reshape"), \
        f"expected the shuffle's reshape missing, got:\n{findings_text(report.diagnosis)}"
