"""A culprit paired with its twin by shape alone, where that twin runs only a part of the culprit's
computation (an ``nn.MultiheadAttention`` paired with the output projection of an attention pool
written out in its parent's forward), is explained through the innermost ancestor twinned by
weights: the why names the bug (a head count, a bias), not the ops the shape-only twin lacks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import findings_text

D, HEADS, TOKENS = 16, 2, 6


class _MhaPool(nn.Module):
    """A learned probe attending over the tokens through ``nn.MultiheadAttention``."""

    def __init__(self) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, D))
        self.attention = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.norm, self.mlp = nn.LayerNorm(D), nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attention(self.probe.expand(x.shape[0], -1, -1), x, x)[0]
        return (h + self.mlp(self.norm(h)))[:, 0]


class _WrittenPool(nn.Module):
    """The same pool with its query, fused key/value and output projections written out."""

    def __init__(self) -> None:
        super().__init__()
        self.latent = nn.Parameter(torch.randn(1, 1, D))
        self.q, self.kv, self.proj = nn.Linear(D, D), nn.Linear(D, 2 * D), nn.Linear(D, D)
        self.norm, self.mlp = nn.LayerNorm(D), nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q(self.latent.expand(b, -1, -1)).reshape(b, 1, HEADS, D // HEADS).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, HEADS, D // HEADS).permute(2, 0, 3, 1, 4).unbind(0)
        h = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, 1, D))
        return (h + self.mlp(self.norm(h)))[:, 0]


class _Net(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.embed, self.head = nn.Linear(D, D), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def _why(change) -> tuple[str, str]:
    torch.manual_seed(0)
    x = torch.randn(2, TOKENS, D, dtype=torch.float64)
    candidate, reference = _Net(_MhaPool()).double().eval(), _Net(_WrittenPool()).double().eval()
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    change(candidate.head.attention)
    report = harness.compare(candidate, reference, x, weights=weights)
    return (report.diagnosis[0]["text"] if report.diagnosis else ""), findings_text(report.diagnosis)


def _four_heads(attention: nn.MultiheadAttention) -> None:
    attention.num_heads, attention.head_dim = 4, D // 4


def _query_bias_zeroed(attention: nn.MultiheadAttention) -> None:
    with torch.no_grad():
        attention.in_proj_bias[:D] = 0


def test_another_head_count_inside_an_attention_pool_is_named():
    why, all_ = _why(_four_heads)
    assert "attention split into 4 heads of 4 in the candidate, 2 heads of 8 in the reference" in why, all_


def test_a_zeroed_query_bias_inside_an_attention_pool_is_named():
    why, all_ = _why(_query_bias_zeroed)
    assert "in_proj_bias holds other values than the reference's q.bias" in why and "extra" not in why, all_
