"""Forward time of our VidEoMT against transformers' Videomt on 3-frame clips, float32, eval, no grad.

Both sides come from one pair (identical weights) and are measured in the same run and the same
benchmark group, so ``tox -- -m bench --benchmark-only`` prints them side by side:

- ``videomt``: the tiny default size (hidden 32, 3 layers, 2x3x3x16x16 clips): per-call overhead.
- ``videomt_small_224`` (nightly): ViT-S width (384, 12 layers, 4 query blocks), a 1x3x3x224x224
  clip, the released VidEoMT-S shape at a 224 crop.

In the default suite (xdist) pytest-benchmark is disabled and each side runs once as a smoke test.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

import harness

Built = Callable[[str], tuple[nn.Module, nn.Module, torch.Tensor]]


@pytest.fixture(scope="module")
def built() -> Built:
    """``name -> (candidate, reference, clip)`` of a pair, each pair built once per module run."""
    cache: dict[str, tuple[nn.Module, nn.Module, torch.Tensor]] = {}

    def get(name: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
        if name not in cache:
            pair = harness.get_pair(name)
            candidate, reference = pair.build(dtype=torch.float32)
            cache[name] = candidate, reference, pair.inputs(dtype=torch.float32).args[0]
        return cache[name]

    return get


def forward(side: str, model: nn.Module, clip: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        out = model(clip) if side == "candidate" else model(pixel_values_videos=clip)
    return out.masks_queries_logits


def _bench(benchmark, built: Built, name: str, side: str, rounds: int) -> torch.Tensor:
    candidate, reference, clip = built(name)
    model = candidate if side == "candidate" else reference
    benchmark.extra_info["parameters"] = sum(p.numel() for p in model.parameters())
    benchmark.extra_info["clip"] = list(clip.shape)
    masks = benchmark.pedantic(forward, args=(side, model, clip), rounds=rounds, warmup_rounds=2)
    b, t = clip.shape[:2]
    assert masks.shape[0] == b * t and bool(torch.isfinite(masks).all())
    return masks


@pytest.mark.bench
@pytest.mark.benchmark(group="videomt_tiny_3frames_forward")
@pytest.mark.parametrize("side", ["candidate", "reference"])
def test_bench_videomt_tiny_3frames_forward(benchmark, built: Built, side: str) -> None:
    _bench(benchmark, built, "videomt", side, rounds=50)


@pytest.mark.bench
@pytest.mark.nightly
@pytest.mark.benchmark(group="videomt_vit_s_224_3frames_forward")
@pytest.mark.parametrize("side", ["candidate", "reference"])
def test_bench_videomt_vit_s_224_3frames_forward(benchmark, built: Built, side: str) -> None:
    _bench(benchmark, built, "videomt_small_224", side, rounds=5)
