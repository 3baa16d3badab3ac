"""A cross-covariance attention (XCiT's: the softmax over channels, ``q @ k^T`` of l2-normalized,
transposed q and k) ported with ``k.transpose(-1, -2)`` where the reference writes
``k.transpose(-2, -1)``: one operation. A k left unnormalized is the missing normalize; q and k
exchanged are the product's operands exchanged."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import findings_text

HEADS, D, TOKENS = 2, 8, 5


class _Reference(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.temperature = nn.Parameter(torch.ones(HEADS, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 4, 1).unbind(0)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        a = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(-1)
        return self.proj((a @ v).permute(0, 3, 1, 2).reshape(b, n, c))


class _Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_qkv, self.out = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.tau = nn.Parameter(torch.ones(HEADS, 1, 1))
        self.bug = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (t.reshape(b, n, HEADS, c // HEADS).permute(0, 2, 3, 1) for t in self.to_qkv(x).chunk(3, -1))
        if self.bug == "swap":
            q, k = k, q
        q = F.normalize(q, dim=-1)
        k = k if self.bug == "no_norm_k" else F.normalize(k, dim=-1)
        a = ((q @ k.transpose(-1, -2)) * self.tau).softmax(-1)
        return self.out((a @ v).permute(0, 3, 1, 2).reshape(b, n, c))


def _why(bug: str) -> tuple[str, str]:
    g = torch.Generator().manual_seed(0)
    candidate, reference = _Port().double().eval(), _Reference().double().eval()
    harness.randomize_(reference, g)
    x = torch.randn(1, TOKENS, D, generator=g, dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    candidate.bug = bug
    report = harness.compare(candidate, reference, x, weights=weights)
    return (report.diagnosis[0]["text"] if report.diagnosis else ""), findings_text(report.diagnosis)


def test_a_key_left_unnormalized_is_the_missing_normalize():
    why, all_ = _why("no_norm_k")
    assert "normalize missing" in why and "transpose" not in why, f"expected the missing normalize, got:\n{all_}"


def test_query_and_key_exchanged_are_the_product_operands_exchanged():
    why, all_ = _why("swap")
    assert "matmul operand input holds the reference's other transposed" in why, \
        f"expected q and k named exchanged in q @ k^T, got:\n{all_}"
