"""RoPE-Mixed ViT vs timm, every layer, float32 and float64; injected bugs are localized."""

from __future__ import annotations


import pytest
import torch
from helpers import PARITY_DTYPES, block_without_layer_scale, inject_forward

import harness
from candidates.rope_vit.rope_vit import MixedRope

VARIANTS = ("small", "base", "large")


# Default suite: two blocks. ViT-S at 224 and non-square in both dtypes; ViT-B/L (same code at
# other widths) non-square in float64. Full depth: ViT-S in both dtypes here, ViT-B/L nightly.
REDUCED = [
    ("small", "_d2", torch.float32), ("small", "_d2", torch.float64),
    ("small", "_d2_nonsquare", torch.float32), ("small", "_d2_nonsquare", torch.float64),
    ("base", "_d2_nonsquare", torch.float64), ("large", "_d2_nonsquare", torch.float64),
]


@pytest.mark.parity
@pytest.mark.parametrize(("variant", "size", "dtype"), REDUCED, ids=lambda v: str(v).removeprefix("torch."))
def test_rope_vit_parity_reduced_depth(parity_check, variant, size, dtype):
    report = parity_check(f"rope_mixed_vit_{variant}{size}", dtype=dtype)
    if dtype == torch.float64:
        assert report.output.max_abs <= 1e-10
    names = {row.candidate for row in report.rows}
    # every layer was compared: the rotary table, both blocks and their sublayers, norm, head
    assert {"rope", "patch_embed", "blocks.1.attn.qkv", "blocks.1.mlp.fc2", "blocks.1", "norm", "head"} <= names


# Full depth: small (22M parameters) in the default suite; base and large nightly, one at a time
# on a single xdist worker (memory).
FULL_VARIANTS = ["small", *(pytest.param(v, marks=[pytest.mark.nightly, pytest.mark.xdist_group("large_models")])
                            for v in VARIANTS[1:])]


@pytest.mark.parity
@pytest.mark.parametrize("dtype", PARITY_DTYPES)
@pytest.mark.parametrize("size", ["", "_nonsquare"])
@pytest.mark.parametrize("variant", FULL_VARIANTS)
def test_rope_vit_parity_full(parity_check, variant, size, dtype):
    report = parity_check(f"rope_mixed_vit_{variant}{size}", dtype=dtype)
    if dtype == torch.float64:
        assert report.output.max_abs <= 1e-10


def _rope_table_with_axes_swapped(self: MixedRope, grid_size: tuple[int, int]) -> torch.Tensor:
    """The injected bug: x frequencies applied to rows and y frequencies to columns."""
    height, width = grid_size
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                                indexing="ij")
    f_x, f_y = self.freqs.float()
    angles = rows.reshape(-1, 1) * f_x[..., None, :] + cols.reshape(-1, 1) * f_y[..., None, :]
    sin, cos = angles.sin().repeat_interleave(2, -1), angles.cos().repeat_interleave(2, -1)
    return torch.cat([sin, cos], dim=-1).to(self.freqs.dtype)


@pytest.mark.parity
def test_rope_vit_parity_localizes_transposed_frequency_mixing():
    pair = harness.get_pair("rope_mixed_vit_small_d2_nonsquare")
    candidate, _ = pair.build(dtype=torch.float64)
    inject_forward(candidate.rope, _rope_table_with_axes_swapped)
    report = harness.compare_pair(pair, candidate=candidate, dtype=torch.float64)
    assert not report.passed
    assert (report.first_divergence, report.culprit) == ("rope", "rope")


@pytest.mark.parity
def test_rope_vit_parity_localizes_missing_layer_scale():
    pair = harness.get_pair("rope_mixed_vit_small_d2_nonsquare")
    candidate, _ = pair.build(dtype=torch.float64)
    inject_forward(candidate.blocks[1], block_without_layer_scale)
    report = harness.compare_pair(pair, candidate=candidate, dtype=torch.float64)
    assert not report.passed
    assert report.culprit == "blocks.1"
    assert report.first_divergence.startswith("blocks.1")
