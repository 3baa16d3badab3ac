"""Weight maps for a linear layer's bias joined where used from stored parts and a constant (timm's
BEiT: ``F.linear(x, qkv.weight, torch.cat((q_bias, k_bias, v_bias)))`` with ``k_bias`` a zero
buffer) against query, key and value layers, the key layer without bias: each stored part takes the
bias of the sibling layer filling its rows in that same call, never the next same-shaped bias in
order of use."""

from __future__ import annotations


import pytest
import torch
from torch import nn

import harness
from helpers import seeded
from qkv_toys import C, JoinedBlock, SplitBlock, tokens

BLOCKS = 2


class JoinedNet(nn.Module):
    """Blocks joining their biases, and a head norm the features' forward never reads (timm's
    ``fc_norm``, read by ``forward_head`` only): an unused tensor of the biases' shape."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[JoinedBlock(zeros_where_used=False) for _ in range(BLOCKS)])
        self.head_norm = nn.LayerNorm(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def pair() -> tuple[nn.Module, nn.Module]:
    return seeded(JoinedNet(), 1), seeded(nn.Sequential(*[SplitBlock() for _ in range(BLOCKS)]), 2)


@pytest.fixture(scope="module")
def joined_map():
    candidate, reference = pair()
    return harness.map_weights(candidate, reference, tokens(), verify=False)


def test_each_joined_bias_part_takes_the_bias_of_its_own_blocks_sibling_layer(joined_map):
    found = {e.candidate: e.reference for e in joined_map.entries if e.candidate.endswith(("q_bias", "v_bias"))}
    expected = {f"blocks.{b}.{part}_bias": (f"{b}.{layer}.bias",) for b in range(BLOCKS)
                for part, layer in (("q", "query"), ("v", "value"))}
    assert found == expected, str(joined_map)


def test_a_joined_bias_against_layers_without_a_key_bias_leaves_only_the_unread_norm_unmatched(joined_map):
    assert joined_map.unmatched == {"candidate": ["head_norm.weight", "head_norm.bias"], "reference": []}, \
        str(joined_map)


def test_an_honest_joined_bias_port_passes_through_its_verified_map():
    candidate, reference = pair()
    weights = harness.map_weights(candidate, reference, tokens())
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, tokens(), weights=weights)
    assert (weights.verified, report.passed) == (True, True), f"{weights}\n{report.format()}"
