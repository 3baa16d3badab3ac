"""Layer-by-layer parity of candidates.convnext against timm (pairs in reference/convnext.py).

Default suite, at float32 and float64: Tiny and Small at full depth (the two depth tables), the
CIFAR-stem ConvNeXt-T, and Base, Large and XLarge at all their widths with two blocks per stage
(``*_d2``), all on 128x128 inputs: stage maps 32, 16, 8 and 4 pixels wide, so each stage's 7x7
depthwise conv (padding 3) uses all 49 taps (tap offset d reaches some output pixel iff |d| < map
side). The ``*_stage3_block`` pairs add one block at each variant's stage-3 width on the 7x7 map a
224 input gives (the centre pixel sees every tap). ``test_default_inputs_exercise_the_depthwise_taps``
measures this with gradients instead of trusting it.
The reduced Base, Large and XLarge hold 26M-103M parameters, so they share one xdist group: they
run one after another on a single worker, never two at once.
Nightly: Base at full depth on 128x128, Large and XLarge at full depth on 32x32 (maps 8, 4, 2, 1:
all taps in stages 0-1, the central 3x3 in stage 2, the centre tap in stage 3), all five variants
at 224x224 and Tiny/Small/Base at 384x384.
"""

from __future__ import annotations

import pytest
import torch
from helpers import PARITY_DTYPES

from candidates.convnext import ConvNeXt, ConvNeXtBlock, ConvNeXtConfig
from reference.convnext import FULL_DEPTH_IN_NIGHTLY, REDUCED_INPUT, SMALL_INPUTS, STAGE3_MAP

FLOAT64_OUTPUT_BOUND = 1e-10  # float64 rounding through a deep net stays far below this; any bug is far above
nightly = pytest.mark.nightly
one_at_a_time = pytest.mark.xdist_group("large_models")  # memory: see the docstring


def check(parity_check, pair: str, dtype: torch.dtype) -> None:
    report = parity_check(pair, dtype=dtype)  # fails with the per-layer table on any mismatch
    assert report.first_divergence is None and report.culprit is None
    assert report.unmatched_candidate == []  # every candidate layer was compared with a timm twin
    assert len(report.rows) > 0
    if dtype == torch.float64:
        assert report.output.max_abs <= FLOAT64_OUTPUT_BOUND, report.format()


@pytest.mark.parity
@pytest.mark.parametrize("dtype", PARITY_DTYPES)
@pytest.mark.parametrize("pair", [
    "convnext_tiny",
    "convnext_small",
    "convnext_tiny_cifar",
    pytest.param("convnext_base_d2", marks=one_at_a_time),
    pytest.param("convnext_large_d2", marks=one_at_a_time),
    pytest.param("convnext_xlarge_d2", marks=one_at_a_time),
])
def test_parity_convnext(parity_check, pair: str, dtype: torch.dtype) -> None:
    check(parity_check, pair, dtype)


@pytest.mark.parity
@pytest.mark.parametrize("dtype", PARITY_DTYPES)
@pytest.mark.parametrize("variant", ["tiny", "small", "base", "large", "xlarge"])
def test_parity_convnext_stage3_block_all_taps(parity_check, variant: str, dtype: torch.dtype) -> None:
    check(parity_check, f"convnext_{variant}_stage3_block", dtype)


def _taps(weight_grad: torch.Tensor) -> int:
    """Number of the 7x7 depthwise taps whose gradient is non-zero in some channel."""
    return int((weight_grad != 0).any(dim=0).sum())


def _taps_per_stage(input_side: int) -> list[int]:
    """Depthwise taps that reach the output, per stage, for a ConvNeXt on ``input_side`` images."""
    torch.manual_seed(0)
    model = ConvNeXt(ConvNeXtConfig(depths=(1, 1, 1, 1), dims=(4, 8, 8, 8), num_classes=3)).double()
    image = torch.randn(1, 3, input_side, input_side, dtype=torch.float64)
    model(image).sum().backward()
    return [_taps(stage.blocks[0].conv_dw.weight.grad) for stage in model.stages]


def test_default_inputs_exercise_the_depthwise_taps() -> None:
    default = {v: shape for v, shape in SMALL_INPUTS.items() if v not in FULL_DEPTH_IN_NIGHTLY}
    default |= {f"{v}_d2": REDUCED_INPUT for v in FULL_DEPTH_IN_NIGHTLY}
    assert {name: _taps_per_stage(shape[-1]) for name, shape in default.items()} == {name: [49] * 4 for name in default}
    # the stage-3 block pairs: a 7x7 map, whose centre pixel alone sees all 49 taps
    torch.manual_seed(0)
    block = ConvNeXtBlock(4).double()
    out = block(torch.randn(1, 4, STAGE3_MAP, STAGE3_MAP, dtype=torch.float64))
    out[..., STAGE3_MAP // 2, STAGE3_MAP // 2].sum().backward()
    assert _taps(block.conv_dw.weight.grad) == 49


FULL_SIZE_PAIRS = [f"convnext_{v}_224" for v in ("tiny", "small", "base", "large", "xlarge")] + [
    f"convnext_{v}_384" for v in ("tiny", "small", "base")] + [f"convnext_{v}" for v in FULL_DEPTH_IN_NIGHTLY]


@pytest.mark.parity
@pytest.mark.nightly
@one_at_a_time
@pytest.mark.parametrize("dtype", PARITY_DTYPES)
@pytest.mark.parametrize("pair", FULL_SIZE_PAIRS)
def test_parity_convnext_full_size(parity_check, pair: str, dtype: torch.dtype) -> None:
    check(parity_check, pair, dtype)


def test_convnext_pairs_registered() -> None:
    import harness

    names = set(harness.list_pairs())
    variants = ("tiny", "small", "base", "large", "xlarge")
    assert {f"convnext_{v}" for v in variants} | set(FULL_SIZE_PAIRS) | {"convnext_tiny_cifar"} <= names
    assert {f"convnext_{v}_stage3_block" for v in variants} <= names
    assert {f"convnext_{v}_d2" for v in FULL_DEPTH_IN_NIGHTLY} <= names
    assert {n for n in harness.list_pairs(tag="nightly") if n.startswith("convnext")} == set(FULL_SIZE_PAIRS)
