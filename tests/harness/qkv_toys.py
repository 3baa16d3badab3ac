"""Attention blocks that keep their query, key and value tensors in different ways, for the weight
map's tests of fused and split projections: one fused ``qkv`` layer, three layers (the key layer
with or without bias, as in BEiT), and a ``qkv`` layer without bias whose bias is joined where used
from a query bias, a zero key bias and a value bias (timm's BEiT and EVA). Every block is a
pre-norm residual attention on ``(B, N, C)`` tokens."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

C, HEADS, TOKENS = 8, 2, 5


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, n, _ = q.shape
    q, k, v = (t.reshape(b, n, HEADS, C // HEADS).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(C // HEADS), dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, C)


def tokens() -> torch.Tensor:
    return torch.randn(2, TOKENS, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


class FusedBlock(nn.Module):
    """One ``qkv`` linear layer; ``bias``: whether it has a bias; ``values_second``: a port reading
    the value rows before the key rows."""

    def __init__(self, bias: bool = True, values_second: bool = False) -> None:
        super().__init__()
        self.values_second = values_second
        self.norm = nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C, bias=bias)
        self.proj = nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        if self.values_second:
            k, v = v, k
        return x + self.proj(attention(q, k, v))


class SplitBlock(nn.Module):
    """Query, key and value layers; ``key_bias``: whether the key layer has a bias (BEiT's has none:
    a key bias adds the same logit to every key and changes no output)."""

    def __init__(self, key_bias: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(C)
        self.query = nn.Linear(C, C)
        self.key = nn.Linear(C, C, bias=key_bias)
        self.value = nn.Linear(C, C)
        self.proj = nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return x + self.proj(attention(self.query(h), self.key(h), self.value(h)))


class JoinedBlock(nn.Module):
    """A ``qkv`` layer without bias, its bias joined in the block's own code from a query bias, a
    zero key bias and a value bias after the norm ran (timm's BEiT); ``zeros_where_used``: the
    key's zeros made by ``zeros_like`` in the forward, else held in a zero buffer."""

    def __init__(self, zeros_where_used: bool = True) -> None:
        super().__init__()
        self.zeros_where_used = zeros_where_used
        self.norm = nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        if not zeros_where_used:
            self.register_buffer("k_bias", torch.zeros(C), persistent=False)
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.proj = nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        k_bias = torch.zeros_like(self.v_bias) if self.zeros_where_used else self.k_bias
        q, k, v = F.linear(h, self.qkv.weight, torch.cat((self.q_bias, k_bias, self.v_bias))).chunk(3, dim=-1)
        return x + self.proj(attention(q, k, v))
