"""A cross-attention written with ``nn.MultiheadAttention`` against one with separate query and
key-value projections: the query is projected from another sequence than the keys and values, so
the fused ``in_proj_weight`` is the concatenation of two layers that read different inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import harness
from port_toys import randomized, tokens

DIM, HEADS = 16, 2


class FusedPool(nn.Module):
    """Attention pooling by a learned query through ``nn.MultiheadAttention`` (one in_proj_weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, DIM))
        self.attention = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
        self.norm = nn.LayerNorm(DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(x.shape[0], -1, -1)                  # (B, 1, C)
        pooled = self.attention(probe, x, x, need_weights=False)[0]    # (B, 1, C)
        return self.norm(pooled[:, 0])                                 # (B, C)


class SplitPool(nn.Module):
    """The same pooling with a query layer on the latent and one key-value layer on the tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.latent = nn.Parameter(torch.randn(1, 1, DIM))
        self.q = nn.Linear(DIM, DIM)
        self.kv = nn.Linear(DIM, 2 * DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.norm = nn.LayerNorm(DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(self.latent.expand(b, -1, -1)).reshape(b, 1, HEADS, c // HEADS).transpose(1, 2)  # (B, H, 1, D)
        k, v = self.kv(x).reshape(b, n, 2, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)               # (B, H, N, D) each
        pooled = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, 1, c)           # (B, 1, C)
        return self.norm(self.proj(pooled)[:, 0])                                                   # (B, C)


@pytest.fixture(params=["fused candidate", "split candidate"])
def pools(request):
    fused, split = randomized(FusedPool(), 1), randomized(SplitPool(), 2)
    candidate, reference = (fused, split) if request.param == "fused candidate" else (split, fused)
    return candidate, reference, harness.map_weights(candidate, reference, tokens())


def test_a_cross_attention_in_proj_is_mapped_to_its_query_and_key_value_layers(pools):
    _, _, weights = pools
    assert (weights.coverage, weights.unmatched, weights.verified) == (1.0, {"candidate": [], "reference": []}, True), \
        str(weights)


def test_a_cross_attention_port_mapped_so_passes(pools):
    candidate, reference, weights = pools
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, tokens(), weights=weights)
    assert report.passed, report.format()
