"""A statistic the port computes and never returns (a forward hook logging ``o.max()``, a debug
check ``torch.isfinite(x).all()``) is no step of its computation: the diagnosis names the port's
error as it would without it, not a hand-written sequence ending in that statistic."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import harness


class _Block(nn.Module):
    """A conv and a norm, then ReLU6 (``relu``: the port's error, a ReLU without the clamp);
    ``check``: a debug check of the result that returns nothing."""

    def __init__(self, relu: bool = False, check: bool = False) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.relu, self.check = relu, check

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        y = F.relu(y) if self.relu else F.relu6(y)
        if self.check and not torch.isfinite(y).all():
            raise FloatingPointError("non-finite features")
        return y


def _diagnosis(candidate: _Block, prepare: Callable[[_Block], None] = lambda block: None) -> list[str]:
    reference = _Block().double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    candidate = candidate.double().eval()
    candidate.load_state_dict(reference.state_dict())
    prepare(candidate)
    x = 50 * torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return [finding["text"] for finding in harness.compare(candidate, reference, x).diagnosis]


def test_a_statistic_a_forward_hook_logs_is_no_step_of_the_computation():
    logged = []
    found = _diagnosis(_Block(relu=True), lambda block: block.register_forward_hook(
        lambda module, args, out: logged.append(out.max())))
    assert found and found[0].startswith("<root>: the candidate applies relu where the reference applies relu6 "), found


def test_a_debug_check_in_the_forward_is_no_step_of_the_computation():
    found = _diagnosis(_Block(relu=True, check=True))
    assert found and found[0].startswith("<root>: the candidate applies relu where the reference applies relu6 "), found
