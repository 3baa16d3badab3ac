"""Forward time of our ConvNeXt-T against timm's at 1x3x224x224, float32, eval, no grad.

Both sides come from the ``convnext_tiny`` pair (identical weights) and are measured in the same
run and the same benchmark group, so ``tox -- -m bench --benchmark-only`` prints them side by side. In the default
suite (xdist) pytest-benchmark is disabled and each side runs once as a smoke test.
"""

from __future__ import annotations

import pytest
import torch
from helpers import image_224, inference_forward
from torch import nn

import harness

GROUP = "convnext_tiny_224_forward"


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    candidate, reference = harness.get_pair("convnext_tiny").build(dtype=torch.float32)
    return {"candidate": candidate, "reference": reference}


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return image_224()


@pytest.mark.bench
@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("side", ["candidate", "reference"])
def test_bench_convnext_tiny_224_forward(benchmark, models, image, side: str) -> None:
    model = models[side]
    benchmark.extra_info["parameters"] = sum(p.numel() for p in model.parameters())
    logits = benchmark.pedantic(inference_forward, args=(model, image), rounds=10, warmup_rounds=2)
    assert logits.shape == (1, 1000) and bool(torch.isfinite(logits).all())
