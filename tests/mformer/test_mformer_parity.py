"""mFormerV1 vs the same hybrid assembled from timm modules; injected bugs are localized."""

from __future__ import annotations


import pytest
import torch
from helpers import PARITY_DTYPES, block_without_layer_scale, inject_forward

import harness
from harness.cli import main as harness_cli

VARIANTS = ("sm", "md", "lg", "xl")


# Default suite: every variant in float64, sm also in float32. md is architecturally identical to
# sm (ConvNeXt-S differs from -T only in the dropped stage 2), so its float32 run adds nothing;
# lg/xl float32 run in nightly at full size.
TINY = [("sm", torch.float32), ("sm", torch.float64), ("md", torch.float64), ("lg", torch.float64),
        ("xl", torch.float64)]


@pytest.mark.parity
@pytest.mark.parametrize(("variant", "dtype"), TINY, ids=lambda v: str(v).removeprefix("torch."))
def test_mformer_parity_tiny(parity_check, variant, dtype):
    report = parity_check(f"mformer_v1_{variant}_tiny", dtype=dtype)
    if dtype == torch.float64:
        assert report.output.max_abs <= 1e-10
    names = {row.candidate for row in report.rows}
    assert {"stem", "stages.0", "stages.1.downsample", "downsample", "rope", "blocks.1", "norm", "head"} <= names


# Full size: sm (23M parameters) in the default suite; md/lg/xl (up to 314M) nightly, one at a
# time on a single xdist worker (memory).
FULL_VARIANTS = ["sm", *(pytest.param(v, marks=[pytest.mark.nightly, pytest.mark.xdist_group("large_models")])
                         for v in VARIANTS[1:])]


@pytest.mark.parity
@pytest.mark.parametrize("dtype", PARITY_DTYPES)
@pytest.mark.parametrize("variant", FULL_VARIANTS)
def test_mformer_parity_full(parity_check, variant, dtype):
    report = parity_check(f"mformer_v1_{variant}", dtype=dtype)
    if dtype == torch.float64:
        assert report.output.max_abs <= 1e-10


@pytest.mark.parity
def test_mformer_parity_cli_compare_exits_0_and_prints_pass(capsys):
    # the command line on the reduced pair: test_mformer_parity_full already compares the full one
    assert harness_cli(["compare", "mformer_v1_sm_tiny", "--dtype", "float64"]) == 0
    assert "PASS" in capsys.readouterr().out


def _juncture_without_norm(self, x: torch.Tensor) -> torch.Tensor:
    """The injected bug: the S2 juncture downsamples without its LayerNorm2d."""
    return self[1](x)


def _rope_table_with_axes_swapped(self, grid_size: tuple[int, int]) -> torch.Tensor:
    """The injected bug: the (f_x, f_y) mixing transposed (x frequencies on rows)."""
    height, width = grid_size
    return type(self).forward(self, (width, height)).unflatten(2, (width, height)).transpose(2, 3).flatten(2, 3)


@pytest.mark.parity
@pytest.mark.parametrize(
    ("module", "bug", "culprit"),
    [
        ("downsample", _juncture_without_norm, "downsample"),
        ("rope", _rope_table_with_axes_swapped, "rope"),
        ("blocks.0", block_without_layer_scale, "blocks.0"),
    ],
    ids=["juncture-downsample", "rope-mixing-transposed", "layer-scale-off"],
)
def test_mformer_parity_localizes_injected_bug(module, bug, culprit):
    pair = harness.get_pair("mformer_v1_sm_tiny")
    candidate, _ = pair.build(dtype=torch.float64)
    target = candidate.get_submodule(module)
    inject_forward(target, bug)
    report = harness.compare_pair(pair, candidate=candidate, dtype=torch.float64)
    assert not report.passed
    assert report.culprit == culprit, report.format()
    assert report.first_divergence.startswith(culprit)
