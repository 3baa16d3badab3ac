"""Benchmarks: tokens, live activation memory and forward time at 224, 512 and 768 px long side.

The default suite runs the toy-width encoder (2 blocks, width 32), whose time is dominated by the
attention's N^2 term; ``--nightly`` adds ViT-S/16 at full size. Candidate and references run in
the same session; nothing asserts on time.
"""

import time
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from candidates.vlm.dinov3 import VARIANTS, DinoV3ViT
from reference.dinov3 import TINY, TINY_TIMM, timm_dinov3, transformers_dinov3

SIDES = [224, 512, 768]


class PeakLiveBytes(TorchDispatchMode):
    """Peak bytes held by tensors that operators created and that are still referenced.

    CPU PyTorch keeps no allocator statistics; this counts every op output once per storage and
    forgets it when its last tensor dies, i.e. the activation memory a forward pass holds.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                key = tensor.untyped_storage().data_ptr()
                if key in self.live:
                    self.live[key][1] += 1
                else:
                    self.live[key] = [tensor.untyped_storage().nbytes(), 1]
                    self.current += self.live[key][0]
                    self.peak = max(self.peak, self.current)
                weakref.finalize(tensor, self._release, key)
        return out

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.current -= entry[0]
                del self.live[key]


def _models(size: str) -> dict:
    """Candidate and references with identical architectures (weights need not match here).

    The parity adapters pin eager attention; ``*_sdpa`` are the same references with their fused
    attention kernel back on, for a fair speed comparison.
    """
    config, timm_config = (TINY, TINY_TIMM) if size == "tiny" else (VARIANTS["vit_small_patch16_dinov3"],) * 2
    models = {"candidate": DinoV3ViT(config), "transformers": transformers_dinov3(config), "timm": timm_dinov3(timm_config)}
    models["transformers_sdpa"] = transformers_dinov3(config)
    models["transformers_sdpa"].config._attn_implementation = "sdpa"
    models["timm_sdpa"] = timm_dinov3(timm_config)
    for block in models["timm_sdpa"].blocks:
        block.attn.fused_attn = True
    return models


def _forward(name, model):
    return (lambda x: model.forward_features(x)) if name.startswith("timm") else model


def _peak_mb(fn, x) -> float:
    with torch.no_grad(), PeakLiveBytes() as tracker:
        fn(x)
    return tracker.peak / 2**20


@pytest.fixture(scope="module")
def tiny_models():
    return {k: m.eval() for k, m in _models("tiny").items()}


def _bench(benchmark, models, impl, side, rounds):
    model = models[impl]
    x = torch.randn(1, 3, side, side)
    fn = _forward(impl, model)
    tokens = (side // 16) ** 2
    benchmark.group = f"dinov3 {side}px"
    benchmark.extra_info.update(tokens=tokens, peak_live_mb=round(_peak_mb(fn, x), 2))
    with torch.no_grad():
        benchmark.pedantic(fn, args=(x,), rounds=rounds, iterations=1, warmup_rounds=1)
    print(f"\n{impl} {side}px: {benchmark.extra_info}")
    assert benchmark.extra_info["tokens"] == {224: 196, 512: 1024, 768: 2304}[side]


@pytest.mark.bench
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("impl", ["candidate", "transformers", "timm", "timm_sdpa"])
def test_vlm_bench_forward(benchmark, tiny_models, impl, side):
    _bench(benchmark, tiny_models, impl, side, rounds=3)


def _median_seconds(fn, x, rounds):
    times = []
    with torch.no_grad():
        fn(x)
        for _ in range(rounds):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _ratio(benchmark, models, rounds):
    x = torch.randn(1, 3, 768, 768)
    seconds = {name: _median_seconds(_forward(name, m), x, rounds) for name, m in models.items()}
    benchmark.group = "dinov3 768px ratio"
    benchmark.extra_info.update({f"{k}_s": round(v, 4) for k, v in seconds.items()})
    benchmark.extra_info.update({f"candidate/{k}": round(seconds["candidate"] / v, 3)
                                 for k, v in seconds.items() if k != "candidate"})
    with torch.no_grad():
        benchmark.pedantic(models["candidate"], args=(x,), rounds=1, iterations=1)
    print(f"\n768px forward (median of {rounds}): {benchmark.extra_info}")


@pytest.mark.bench
def test_vlm_bench_ratio_at_768(benchmark, tiny_models):
    _ratio(benchmark, tiny_models, rounds=3)


@pytest.mark.bench
@pytest.mark.nightly
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("impl", ["candidate", "transformers", "timm"])
def test_vlm_bench_forward_vit_small(benchmark, impl, side):
    _bench(benchmark, {impl: _models("small")[impl].eval()}, impl, side, rounds=3)


@pytest.mark.bench
@pytest.mark.nightly
def test_vlm_bench_ratio_at_768_vit_small(benchmark):
    _ratio(benchmark, {k: m.eval() for k, m in _models("small").items()}, rounds=3)
