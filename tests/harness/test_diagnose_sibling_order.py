"""Split projections called ``key``, ``value``, then ``query`` against a fused ``qkv`` whose rows
hold the query first: the weight map gives each its rows by role, and the diagnosis joins them in
the order of those rows, not the order of the calls. A head-count error after them is then named
as such, not as projections holding each other's rows."""

from __future__ import annotations

import torch
from torch import nn

import harness
from port_toys import randomized, tokens

DIM = 16


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = q.shape
    q, k, v = (t.reshape(b, n, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-1, -2) * (DIM // 2) ** -0.5).softmax(-1)
    return (scores @ v).transpose(1, 2).reshape(b, n, c)


class Fused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.qkv, self.proj = nn.LayerNorm(DIM), nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)

    def forward(self, x):
        return x + self.proj(attend(*self.qkv(self.norm(x)).chunk(3, -1), heads=2))


class KeyFirst(nn.Module):
    """Separate projections, called key, value, query."""

    def __init__(self) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(DIM)
        self.query, self.key, self.value = (nn.Linear(DIM, DIM) for _ in range(3))
        self.output = nn.Linear(DIM, DIM)
        self.heads = 2

    def forward(self, x):
        y = self.layernorm(x)
        k, v, q = self.key(y), self.value(y), self.query(y)
        return x + self.output(attend(q, k, v, self.heads))


def test_a_head_count_after_projections_called_out_of_order_is_the_why():
    candidate, reference = randomized(nn.Sequential(KeyFirst(), KeyFirst()), 1), randomized(nn.Sequential(Fused(), Fused()), 2)
    x = tokens()
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    candidate[1].heads = 4
    report = harness.compare(candidate, reference, x, weights=weights)
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert "4 heads of 4 in the candidate, 2 heads of 8 in the reference" in why, \
        f"why: {why or '(none)'}; expected the head count\n{report.format()}"
