"""Separate ``q``, ``k``, ``v`` projections against one fused ``qkv`` whose rows the reference lays
out per head, ``(heads, kd + kd + vd)`` (EfficientFormer's and LeViT's attention: keys narrower than
values): the order of use gives each projection consecutive rows of the fused weight; verification
finds that each takes, from every head's block, its own part of that block, in every block alike."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness
from helpers import transferred
from port_toys import randomized

C, HEADS, KD, VD = 8, 2, 2, 4


class _Fused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(C, HEADS * (2 * KD + VD)), nn.Linear(HEADS * VD, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, HEADS, -1).transpose(1, 2).split([KD, KD, VD], dim=-1)
        scores = (q @ k.transpose(-2, -1) * KD ** -0.5).softmax(-1)
        return self.proj((scores @ v).transpose(1, 2).reshape(b, n, -1))


class _Split(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(C, HEADS * KD), nn.Linear(C, HEADS * KD)
        self.v, self.proj = nn.Linear(C, HEADS * VD), nn.Linear(HEADS * VD, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (layer(x).reshape(b, n, HEADS, -1).transpose(1, 2) for layer in (self.q, self.k, self.v))
        scores = (q @ k.transpose(-2, -1) * KD ** -0.5).softmax(-1)
        return self.proj((scores @ v).transpose(1, 2).reshape(b, n, -1))


class _Blocks(nn.Module):
    def __init__(self, attention: type[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([attention() for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


def _tokens() -> torch.Tensor:
    return torch.randn(2, 5, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture(scope="module")
def port():
    return transferred(randomized(_Blocks(_Split), 1), randomized(_Blocks(_Fused), 2), _tokens())


def test_split_projections_against_a_fused_qkv_laid_out_per_head_verify(port):
    _, _, weights = port
    assert weights.verified, f"expected the per-head parts of blocks.*.qkv to verify; got:\n{weights}"


def test_a_key_takes_its_part_of_every_head_of_the_fused_rows(port):
    _, reference, weights = port
    rows = torch.arange(HEADS * (2 * KD + VD)).reshape(HEADS, -1)[:, KD:2 * KD].reshape(-1)
    for block in range(3):
        taken = weights.to_candidate(reference.state_dict())[f"blocks.{block}.k.weight"]
        assert torch.equal(taken, reference.blocks[block].qkv.weight[rows]), \
            f"blocks.{block}.k.weight should take rows {rows.tolist()} of qkv.weight; the map:\n{weights}"


def test_a_port_with_split_projections_passes_against_a_qkv_laid_out_per_head(port):
    candidate, reference, weights = port
    report = harness.compare(candidate, reference, _tokens(), weights=weights)
    assert report.passed, report.format()


def test_the_fused_rows_read_back_from_split_projections_per_head(port):
    candidate, reference, weights = port
    back = weights.to_reference(dict(candidate.state_dict()))
    assert torch.equal(back["blocks.1.qkv.weight"], reference.blocks[1].qkv.weight) \
        and torch.equal(back["blocks.1.qkv.bias"], reference.blocks[1].qkv.bias), \
        "reading the map backward should give back the fused rows in their per-head layout"
