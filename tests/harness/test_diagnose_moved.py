"""An op the candidate applies in another place than the reference (a ReLU before the residual add
where the reference applies it after the add) is one op moved, not an op missing: the why names
both places."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness

C = 4


class _Block(nn.Module):
    def __init__(self, relu_first: bool) -> None:
        super().__init__()
        self.conv, self.bn, self.relu_first = nn.Conv2d(C, C, 3, padding=1), nn.BatchNorm2d(C), relu_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return torch.relu(y) + x if self.relu_first else torch.relu(y + x)


@pytest.mark.parametrize(("candidate_first", "reference_first"), [(True, False), (False, True)])
def test_an_activation_moved_across_the_residual_add_is_said_to_be_moved(candidate_first, reference_first):
    torch.manual_seed(0)
    reference = _Block(reference_first).double().eval()
    candidate = _Block(candidate_first).double().eval()
    candidate.load_state_dict(reference.state_dict())
    report = harness.compare(candidate, reference, torch.randn(2, C, 5, 5, dtype=torch.float64))
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert " in another place than the reference's: missing in the candidate " in why, report.format()
