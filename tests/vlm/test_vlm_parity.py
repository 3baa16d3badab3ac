"""Layer-by-layer parity of the DINOv3 encoder against transformers and timm, and of the
projector's 2D pixel shuffle against an F.pixel_unshuffle formulation."""

import pytest
import torch

import harness
from helpers import PARITY_DTYPES
from candidates.vlm.dinov3 import DinoV3ViT

# Candidate calls without a twin: transformers embeds with a bare conv (no channels-last patch
# module); timm's forward_features is not a root call, and timm applies q/k/v as one fused call.
QKV_CALLS = {f"blocks.{i}.attn.{p}_proj#0" for i in (0, 1) for p in "qkv"}
ALLOWED_UNMATCHED = {
    "dinov3_vit": {"patch_embed#0"},
    "dinov3_vit_timm": {"<root>#0"} | QKV_CALLS,
    "dinov3_projector": set(),
}


@pytest.mark.parity
@pytest.mark.parametrize("dtype", PARITY_DTYPES)
@pytest.mark.parametrize(
    "name", ["dinov3_vit", "dinov3_vit_rect", "dinov3_vit_timm", "dinov3_vit_timm_rect", "dinov3_projector"]
)
def test_vlm_parity(parity_check, name, dtype):
    report = parity_check(name, dtype=dtype)
    result = report.to_dict()
    if dtype == torch.float64:
        assert result["output"]["max_abs"] <= 1e-10
    assert set(result["unmatched"]["candidate"]) <= ALLOWED_UNMATCHED[name.removesuffix("_rect")]
    traced = {row["candidate"] for row in result["layers"]}
    if name != "dinov3_projector":  # every block, the RoPE table and the final norm were compared
        assert {"rope", "blocks.0", "blocks.1", "blocks.1.attn", "norm"} <= traced
    if name.startswith("dinov3_vit") and "timm" not in name:  # q, k, v each against its own twin
        assert {"blocks.0.attn.q_proj", "blocks.0.attn.k_proj", "blocks.1.attn.v_proj"} <= traced


@pytest.mark.parity
@pytest.mark.parametrize("size", [(16, 16), (96, 32), (32, 112), (48, 80)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", ["dinov3_vit", "dinov3_vit_timm"])
def test_vlm_parity_any_multiple_of_patch(name, size):
    """Any H, W that are multiples of 16: a single patch, tall, wide, odd grids (3x5)."""
    inputs = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    report = harness.compare_pair(name, dtype=torch.float64, inputs=inputs)
    assert report.passed, report.format()
    assert report.output.max_abs <= 1e-10


@pytest.mark.parity
def test_vlm_parity_rope_rounding_matters():
    """The two ports round RoPE differently; float64 parity tells them apart (so ``rope_impl`` is needed)."""
    from dataclasses import replace

    for name, wrong in (("dinov3_vit", "periods"), ("dinov3_vit_timm", "inv_freq")):
        built, _ = harness.get_pair(name).build(dtype=torch.float64)
        swapped = DinoV3ViT(replace(built.config, rope_impl=wrong)).double().eval()
        swapped.load_state_dict(built.state_dict())
        report = harness.compare_pair(name, candidate=swapped, dtype=torch.float64)
        assert not report.passed and report.first_divergence == "rope"
        assert 1e-10 < report.output.max_abs < 1e-6  # rounding-sized, far above float64 noise


@pytest.mark.parity
@pytest.mark.nightly
@pytest.mark.parametrize("dtype", PARITY_DTYPES)
@pytest.mark.parametrize("name", ["dinov3_vit_small", "dinov3_vit_timm_small"])
def test_vlm_parity_vit_small(parity_check, name, dtype):
    report = parity_check(name, dtype=dtype)
    if dtype == torch.float64:
        assert report.to_dict()["output"]["max_abs"] <= 1e-10
