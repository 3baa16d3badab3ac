"""Injected bugs are caught by parity and localized to the module that has them."""

import pytest
import torch

import harness
from candidates.layers import RopeEmbedding
from candidates.vlm.dinov3 import Projection
from candidates.vlm.projector import PixelShuffle

RECT_INPUT = torch.randn(1, 3, 48, 80, generator=torch.Generator().manual_seed(2))  # grid 3x5


class SinCosSwapped(RopeEmbedding):
    def forward(self, grid, *, dtype, device):
        cos, sin = super().forward(grid, dtype=dtype, device=device)
        return sin, cos


class GridTransposed(RopeEmbedding):
    """Positions built for (Wp, Hp): the same number of rows, the wrong coordinates."""

    def forward(self, grid, *, dtype, device):
        return super().forward((grid[1], grid[0]), dtype=dtype, device=device)


class ShuffleColumnsFirst(PixelShuffle):
    """Folds a block as (column, row, channel) instead of (row, column, channel)."""

    def forward(self, x, grid, factor):
        batch, _, dim = x.shape
        gh, gw = grid[0] // factor, grid[1] // factor
        x = x.reshape(batch, gh, factor, gw, factor, dim).permute(0, 1, 3, 4, 2, 5)
        return x.reshape(batch, gh * gw, factor * factor * dim)


class BiasDropped(Projection):
    """Ignores its bias, as a fused-bias concatenation that leaves one part out would."""

    def forward(self, x, weight, bias):
        return super().forward(x, weight, None)


def _with_rope(pair: str, bug: type[RopeEmbedding]) -> torch.nn.Module:
    candidate, _ = harness.get_pair(pair).build(dtype=torch.float64)
    rope = candidate.rope
    candidate.rope = bug(rope.head_dim, theta=rope.theta, impl=rope.impl)
    return candidate


@pytest.mark.parity
@pytest.mark.parametrize("bug", [SinCosSwapped, GridTransposed], ids=["sin_cos_swapped", "grid_transposed"])
@pytest.mark.parametrize("pair", ["dinov3_vit", "dinov3_vit_timm"])
def test_vlm_parity_localizes_rope_bugs(pair, bug):
    report = harness.compare_pair(pair, candidate=_with_rope(pair, bug), dtype=torch.float64, inputs=RECT_INPUT)
    assert not report.passed
    assert report.first_divergence == "rope" and report.culprit == "rope", report.format()
    rows = {row.candidate: row for row in report.rows}
    assert rows["patch_embed.proj"].passed and rows["blocks.0.norm1"].passed  # nothing before it is blamed


@pytest.mark.parity
def test_vlm_parity_localizes_wrong_shuffle_order():
    candidate, _ = harness.get_pair("dinov3_projector").build(dtype=torch.float64)
    candidate.shuffle = ShuffleColumnsFirst()
    report = harness.compare_pair("dinov3_projector", candidate=candidate, dtype=torch.float64)
    assert not report.passed
    assert report.first_divergence == "shuffle" and report.culprit == "shuffle", report.format()


@pytest.mark.parity
@pytest.mark.parametrize("projection", ["q_proj", "v_proj"])
def test_vlm_parity_localizes_missing_qv_bias(projection):
    """transformers applies q, k, v separately; the candidate's traced q/k/v twins blame the right one."""
    candidate, _ = harness.get_pair("dinov3_vit").build(dtype=torch.float64)
    setattr(candidate.blocks[1].attn, projection, BiasDropped())
    report = harness.compare_pair("dinov3_vit", candidate=candidate, dtype=torch.float64)
    assert not report.passed
    blamed = f"blocks.1.attn.{projection}"
    assert report.first_divergence == blamed and report.culprit == blamed, report.format()
    rows = {row.candidate: row for row in report.rows}
    assert rows["blocks.1.attn.k_proj"].passed and rows["blocks.0.attn"].passed
