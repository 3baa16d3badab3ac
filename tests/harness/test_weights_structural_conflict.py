"""Verification tries other choices of weights only where some could make the disagreeing module
agree. A port that applies an operation reading no weight where its reference does not (a ReLU
before the residual add), or passes no attention mask where the reference passes one, differs in
its code: the map is reported with that conflict after one comparison, without spending the
alternatives' budget of full comparisons, in every block showing the same difference."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import harness
import harness.api
from port_toys import conv_bn, randomized


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv_bn(8, 8, 3), conv_bn(8, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + x)


class _ReluBeforeAdd(_Block):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.relu(self.conv2(torch.relu(self.conv1(x)))) + x)


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.proj = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.bias = nn.Parameter(torch.zeros(2, 5, 5))

    def mask(self) -> torch.Tensor | None:
        return self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (layer(x).reshape(b, n, 2, 4).transpose(1, 2) for layer in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask())
        return self.proj(out.transpose(1, 2).reshape(b, n, 8))


class _Unmasked(_Attention):
    def mask(self) -> None:
        return None


def _comparisons(monkeypatch) -> list:
    calls: list = []
    compare = harness.api.compare

    def counted(*args, **kwargs):
        calls.append(kwargs.get("diagnose", True))
        return compare(*args, **kwargs)

    monkeypatch.setattr(harness.api, "compare", counted)
    return calls


def test_a_relu_before_the_add_in_every_block_costs_no_alternative_comparisons(monkeypatch):
    candidate = randomized(nn.Sequential(*(_ReluBeforeAdd() for _ in range(3))), 1)
    reference = randomized(nn.Sequential(*(_Block() for _ in range(3))), 2)
    calls = _comparisons(monkeypatch)
    weights = harness.map_weights(candidate, reference, torch.randn(2, 8, 6, 6, dtype=torch.float64))
    assert not weights.verified and len(calls) <= 2, \
        f"expected the check and the diagnosis only, got {len(calls)} comparisons; the map:\n{weights}"


def test_an_attention_mask_left_out_costs_no_alternative_comparisons(monkeypatch):
    candidate, reference = randomized(_Unmasked(), 1), randomized(_Attention(), 2)
    calls = _comparisons(monkeypatch)
    weights = harness.map_weights(candidate, reference, torch.randn(2, 5, 8, dtype=torch.float64))
    assert not weights.verified and len(calls) <= 2, \
        f"expected the check and the diagnosis only, got {len(calls)} comparisons; the map:\n{weights}"
