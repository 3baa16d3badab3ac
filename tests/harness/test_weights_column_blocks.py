"""A projection of concatenated branches (ASPP: ``project(cat(branches))``, a ``(out, n * in)``
weight) ported as a sum of one projection per branch, stored stacked ``(n, out, in)``: block ``k``
is the ``k``-th group of input columns, so the map reshapes the weight to ``(out, n, in)`` and
moves the block axis first; read backward, the blocks join again."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import harness
from helpers import transferred
from port_toys import randomized

C_IN, C_BRANCH, C_OUT = 4, 6, 5


class _Concatenated(nn.Module):
    """Two branches concatenated along channels, then one 1x1 projection."""

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleList([nn.Conv2d(C_IN, C_BRANCH, 1), nn.Conv2d(C_IN, C_BRANCH, 3, padding=1)])
        self.project = nn.Conv2d(2 * C_BRANCH, C_OUT, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([F.relu(b(x)) for b in self.branches], 1))


class _Summed(nn.Module):
    """The same, projecting each branch by its own block of a stacked ``(n, out, in)`` weight."""

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleList([nn.Conv2d(C_IN, C_BRANCH, 1), nn.Conv2d(C_IN, C_BRANCH, 3, padding=1)])
        self.blocks = nn.Parameter(torch.zeros(2, C_OUT, C_BRANCH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(torch.einsum("bchw,oc->bohw", F.relu(b(x)), self.blocks[k]) for k, b in enumerate(self.branches))


def _images() -> torch.Tensor:
    return torch.randn(2, C_IN, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _blocks_entry(weights, key: str):
    return {e.candidate: e for e in weights.entries}[key]


def test_per_branch_projections_take_the_concatenated_projection_in_column_blocks():
    _, _, weights = transferred(_Summed().double().eval(), randomized(_Concatenated(), 4), _images())
    entry = _blocks_entry(weights, "blocks")
    assert weights.verified and entry.reference == ("project.weight",) and entry.steps == (
        {"op": "reshape", "shape": [C_OUT, 2, C_BRANCH]}, {"op": "permute", "dims": [1, 0, 2]}), \
        f"expected blocks <- project.weight reshaped (out, n, in) with the block axis first, verified; got:\n{weights}"


def test_a_port_summing_per_branch_projections_passes():
    candidate, reference, weights = transferred(_Summed().double().eval(), randomized(_Concatenated(), 4), _images())
    report = harness.compare(candidate, reference, _images(), weights=weights)
    assert report.passed, report.format()


def test_column_blocks_read_backward_give_the_concatenated_projection():
    candidate, reference, weights = transferred(_Summed().double().eval(), randomized(_Concatenated(), 4), _images())
    back = weights.to_reference(dict(candidate.state_dict()))["project.weight"]
    expected = reference.project.weight.detach()
    assert torch.equal(back, expected), f"expected project.weight back, max difference {(back - expected).abs().max()}"


def test_a_projection_of_the_concatenation_takes_stacked_blocks_joined():
    candidate, reference, weights = transferred(_Concatenated().double().eval(), randomized(_Summed(), 4), _images())
    report = harness.compare(candidate, reference, _images(), weights=weights)
    assert weights.verified and report.passed and _blocks_entry(weights, "project.weight").reference == ("blocks",), \
        f"expected project.weight <- blocks, verified, and the port passing; got:\n{weights}\n{report.format()}"
