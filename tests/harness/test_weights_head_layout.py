"""A fused ``qkv`` projection whose output rows one port lays out per head, ``(heads, 3, head_dim)``,
and the other as ``(3, heads, head_dim)``: the map regroups the rows (weight and bias alike), the
verification finds that regrouping, and the projection's output is compared in the reference's
order of features."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import harness
from helpers import transferred
from port_toys import randomized

C, HEADS = 16, 4


class _Attention(nn.Module):
    def __init__(self, per_head: bool) -> None:
        super().__init__()
        self.qkv, self.proj, self.per_head = nn.Linear(C, 3 * C), nn.Linear(C, C), per_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        layout = (b, n, HEADS, 3, C // HEADS) if self.per_head else (b, n, 3, HEADS, C // HEADS)
        order = (3, 0, 2, 1, 4) if self.per_head else (2, 0, 3, 1, 4)
        q, k, v = self.qkv(x).reshape(layout).permute(order)                   # (B, H, N, D) each
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, C))


class _Model(nn.Module):
    def __init__(self, per_head: bool) -> None:
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(C), _Attention(per_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


def _tokens() -> torch.Tensor:
    return torch.randn(2, 5, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture
def port():
    return transferred(randomized(_Model(per_head=True), 1), randomized(_Model(per_head=False), 2), _tokens())


def test_a_qkv_laid_out_per_head_is_mapped_by_regrouping_its_rows_and_verified(port):
    _, _, weights = port
    steps = {e.candidate: e.transform for e in weights.entries}
    assert weights.verified and steps["attn.qkv.weight"].endswith("permute(dims=[1, 0, 2, 3]) + reshape(shape=[48, 16])"), \
        str(weights)


def test_a_qkv_laid_out_per_head_passes_with_its_output_compared_in_the_reference_order(port):
    candidate, reference, weights = port
    report = harness.compare(candidate, reference, _tokens(), weights=weights)
    row = next(r for r in report.rows if r.candidate == "attn.qkv")
    assert report.passed and row.adapter.startswith("features regrouped (4, 3, 4) -> (3, 4, 4)"), report.format()


def test_a_bias_error_in_a_qkv_laid_out_per_head_is_blamed_on_it(port):
    candidate, reference, weights = port
    with torch.no_grad():
        candidate.attn.qkv.bias[5] += 1e-3
    report = harness.compare(candidate, reference, _tokens(), weights=weights)
    assert (report.passed, report.culprit) == (False, "attn.qkv"), report.format()
