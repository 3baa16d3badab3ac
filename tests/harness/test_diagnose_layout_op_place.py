"""A layout op the candidate lacks, which the reference runs in a submodule the candidate does not
have (independently written models name their parts otherwise), is a finding on the candidate's
module, naming the reference's submodule as the one applying it."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import findings_text

N = C = 6  # as many tokens as channels: the transposed map has the shape of the one as it is


class _Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class _Reference(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.swap, self.fc = _Transpose(), nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.swap(x))


class _Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def test_a_missing_transpose_of_a_submodule_the_candidate_lacks_is_on_the_candidate_module():
    g = torch.Generator().manual_seed(0)
    candidate, reference = _Port().double().eval(), _Reference().double().eval()
    harness.randomize_(reference, g)
    x = torch.randn(1, N, C, generator=g, dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, x, weights=weights)
    all_ = findings_text(report.diagnosis)
    assert not any(f["module"].endswith("swap") for f in report.diagnosis), \
        f"expected no finding on a 'swap' the candidate does not have, got:\n{all_}"
    assert any("the reference's swap applies it" in f["text"] for f in report.diagnosis), \
        f"expected the missing transpose said applied by the reference's swap, got:\n{all_}"
