"""Weight maps for a linear layer's bias joined where used from stored parts and a constant (timm's
BEiT: ``F.linear(x, qkv.weight, torch.cat((q_bias, k_bias, v_bias)))`` with ``k_bias`` a zero
buffer) against query, key and value layers, the key layer without bias: each stored part takes the
bias of the sibling layer filling its rows in that same call, never the next same-shaped bias in
order of use."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import seeded

C, HEADS, TOKENS, BLOCKS = 8, 2, 5, 2


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, n, _ = q.shape
    q, k, v = (t.reshape(b, n, HEADS, C // HEADS).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(C // HEADS), dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, C)


class BufferJoinedBlock(nn.Module):
    """An attention block on a ``qkv`` layer without bias, its bias joined in the attention's own
    code from a query bias, a zero key-bias buffer and a value bias after the norm ran (timm's BEiT)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("k_bias", torch.zeros(C), persistent=False)
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.proj = nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        q, k, v = F.linear(h, self.qkv.weight, bias).chunk(3, dim=-1)
        return x + self.proj(attention(q, k, v))


class SplitBlock(nn.Module):
    """The same block with query, key and value layers, the key layer without bias (HF's BEiT)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(C)
        self.query = nn.Linear(C, C)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C)
        self.proj = nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return x + self.proj(attention(self.query(h), self.key(h), self.value(h)))


class JoinedNet(nn.Module):
    """Blocks joining their biases, and a head norm the features' forward never reads (timm's
    ``fc_norm``, read by ``forward_head`` only): an unused tensor of the biases' shape."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[BufferJoinedBlock() for _ in range(BLOCKS)])
        self.head_norm = nn.LayerNorm(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def tokens() -> torch.Tensor:
    return torch.randn(2, TOKENS, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


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
