"""Forward time at 224x224, batch 1, float32: mFormerV1-sm vs ConvNeXt-T vs RoPE-Mixed ViT-S.

Each model is measured as candidate (ours) and reference (timm, or the timm-assembled hybrid)
in the same run and benchmark group, so ``tox -- -m bench --benchmark-only`` prints all six side by side. In the
default suite (xdist) pytest-benchmark is disabled and each forward runs once as a smoke test.
"""

from __future__ import annotations

import pytest
import torch
from helpers import image_224, inference_forward
from torch import nn

import harness

GROUP = "mformer_sm_vs_parents_224_forward"
PAIRS = {"mformer_v1_sm": "mformer_v1_sm", "convnext_tiny": "convnext_tiny", "rope_mixed_vit_small": "rope_mixed_vit_small"}


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return image_224()


@pytest.fixture(scope="module")
def built() -> dict[str, tuple[nn.Module, nn.Module]]:
    return {}


@pytest.mark.bench
@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("side", ["candidate", "reference"])
@pytest.mark.parametrize("model_name", list(PAIRS))
def test_bench_mformer_sm_vs_parents_224_forward(benchmark, built, image, model_name: str, side: str) -> None:
    if model_name not in built:
        built[model_name] = harness.get_pair(PAIRS[model_name]).build(dtype=torch.float32)
    model = built[model_name][0 if side == "candidate" else 1]
    benchmark.extra_info["parameters"] = sum(p.numel() for p in model.parameters())
    logits = benchmark.pedantic(inference_forward, args=(model, image), rounds=10, warmup_rounds=2)
    assert logits.shape == (1, 1000) and bool(torch.isfinite(logits).all())
