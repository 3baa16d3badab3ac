"""A pool's arguments read alike whether they are passed by position (``nn.AvgPool2d`` passes them
all so) or by keyword, as one int or one per axis, with its stride left to default to its window."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.diagnose import record_ops


class _Call(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _args(module: nn.Module) -> dict:
    _, ops, _ = record_ops(module, (torch.randn(1, 2, 6, 6, dtype=torch.float64),), {})
    return ops[0].args


@pytest.mark.parametrize("module, spelled", [
    (nn.AvgPool2d(3, 1, 1, count_include_pad=False),
     lambda x: F.avg_pool2d(x, kernel_size=(3, 3), stride=1, padding=1, count_include_pad=False)),
    (nn.MaxPool2d(2), lambda x: F.max_pool2d(x, 2, stride=2)),
    (nn.AvgPool2d(2), lambda x: F.avg_pool2d(x, (2, 2), (2, 2))),
])
def test_a_pool_module_and_the_call_a_port_writes_record_the_same_arguments(module, spelled) -> None:
    assert _args(module) == _args(_Call(spelled))


def test_a_pool_counting_its_padding_differs_from_one_that_does_not() -> None:
    assert _args(nn.AvgPool2d(3, 1, 1, count_include_pad=True))["count_include_pad"] is True
    assert _args(_Call(lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)))["count_include_pad"] is False
