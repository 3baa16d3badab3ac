"""Benchmarks: tokens, live activation memory and forward time at 224, 512 and 768 px squares
and a non-square photo-sized image (427x640, resized to 512x768).

Every input goes through the image processor; the token count reported is read from each
model's output (the candidate's patch grid, the references' sequence length) and must equal the
processor's plan. Peak live memory is deterministic and asserted to follow the token count
(``test_vlm_peak_memory_follows_token_count``); time is only reported, never asserted.

The default suite runs the toy-width encoder (2 blocks, width 32), whose time is dominated by the
attention's N^2 term; ``--nightly`` adds ViT-S/16 at full size. Candidate and references run in
the same session.
"""

import functools
import math
import time
import weakref

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from candidates.vlm.dinov3 import VARIANTS, DinoV3ViT
from candidates.vlm.processor import ImageProcessor, ImageProcessorConfig, ProcessedImage
from reference.vlm import TINY, TINY_TIMM, timm_dinov3, transformers_dinov3

IMAGES = {  # name -> (input height, input width, max_img_size)
    "224": (224, 224, 224),
    "512": (512, 512, 512),
    "768": (768, 768, 768),
    "photo_427x640": (427, 640, 768),  # VGA-like landscape photo, upscaled to 512x768
}


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


@functools.cache
def _processed(image: str) -> ProcessedImage:
    """A smooth photo-like uint8 image (gradients plus noise) through the processor, s=2."""
    height, width, max_size = IMAGES[image]
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width]
    smooth = np.stack([128 + 100 * np.sin(xs / 37 + c) * np.cos(ys / 53 - c) for c in range(3)], axis=-1)
    pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    return ImageProcessor(ImageProcessorConfig(max_img_size=max_size, pixel_shuffle_factor=2)).process(pixels)


def _sequence_length(name: str, out) -> int:
    """Tokens the model produced (prefix + patches), from its own output."""
    if name == "candidate":
        hp, wp = out.patch_grid
        assert out.patch_tokens.shape[1] == hp * wp
        return out.num_prefix_tokens + hp * wp
    hidden = out if name.startswith("timm") else out.last_hidden_state
    return hidden.shape[1]


def _prefix_tokens(name: str, model) -> int:
    """CLS + registers, from each model's own configuration."""
    if name == "candidate":
        return model.config.num_prefix_tokens
    if name.startswith("timm"):
        return model.num_prefix_tokens
    return 1 + model.config.num_register_tokens


def _peak_mb(fn, x) -> tuple[float, object]:
    with torch.no_grad(), PeakLiveBytes() as tracker:
        out = fn(x)
    return tracker.peak / 2**20, out


@pytest.fixture(scope="module")
def tiny_models():
    return {k: m.eval() for k, m in _models("tiny").items()}


def _bench(benchmark, models, impl, image, rounds):
    model = models[impl]
    processed = _processed(image)
    x = processed.pixel_values[None]  # (1, 3, H, W)
    fn = _forward(impl, model)
    peak_mb, out = _peak_mb(fn, x)
    patch_tokens = _sequence_length(impl, out) - _prefix_tokens(impl, model)
    benchmark.group = f"dinov3 {image}"
    benchmark.extra_info.update(
        pixels=f"{x.shape[-2]}x{x.shape[-1]}", patch_tokens=patch_tokens, peak_live_mb=round(peak_mb, 2)
    )
    with torch.no_grad():
        benchmark.pedantic(fn, args=(x,), rounds=rounds, iterations=1, warmup_rounds=1)
    print(f"\n{impl} {image}: {benchmark.extra_info}")
    assert patch_tokens == math.prod(processed.grid.patch_grid), (patch_tokens, processed.grid)


@pytest.mark.bench
@pytest.mark.parametrize("image", list(IMAGES))
@pytest.mark.parametrize("impl", ["candidate", "transformers", "timm", "timm_sdpa"])
def test_vlm_bench_forward(benchmark, tiny_models, impl, image):
    _bench(benchmark, tiny_models, impl, image, rounds=3)


# Linear-memory forwards (fused attention) hold O(T) activations; eager attention materializes
# (heads, T, T) scores. From 224 to 768 px, T goes 201 -> 2309 (x11.5). Measured: x11.5 for the
# fused ones, x103-106 for eager (its O(T) part is not negligible at 224 px, so below x132 = 11.5^2).
LINEAR_BAND = (0.9, 1.1)  # peak ratio / token ratio
QUADRATIC_BAND = (0.5, 1.0)  # peak ratio / token ratio**2


def test_vlm_peak_memory_follows_token_count(tiny_models):
    """Deterministic: peak live bytes 224 -> 768 px scale like T (fused attention) or T^2 (eager)."""
    peaks, lengths = {}, {}
    for impl in ("candidate", "timm_sdpa", "transformers", "timm"):
        for image in ("224", "768"):
            peaks[impl, image], out = _peak_mb(_forward(impl, tiny_models[impl]), _processed(image).pixel_values[None])
            lengths[impl, image] = _sequence_length(impl, out)
    assert len({lengths[impl, "224"] for impl in ("candidate", "timm_sdpa", "transformers", "timm")}) == 1
    token_ratio = lengths["candidate", "768"] / lengths["candidate", "224"]
    assert token_ratio == pytest.approx(2309 / 201)
    ratios = {impl: peaks[impl, "768"] / peaks[impl, "224"] for impl in ("candidate", "timm_sdpa", "transformers", "timm")}
    print(f"\ntoken ratio {token_ratio:.2f}, peak memory ratios {ratios}")
    for impl in ("candidate", "timm_sdpa"):
        assert LINEAR_BAND[0] <= ratios[impl] / token_ratio <= LINEAR_BAND[1], (impl, ratios)
    for impl in ("transformers", "timm"):
        assert QUADRATIC_BAND[0] <= ratios[impl] / token_ratio**2 <= QUADRATIC_BAND[1], (impl, ratios)


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
    x = _processed("768").pixel_values[None]
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
@pytest.mark.parametrize("image", list(IMAGES))
@pytest.mark.parametrize("impl", ["candidate", "transformers", "timm"])
def test_vlm_bench_forward_vit_small(benchmark, impl, image):
    _bench(benchmark, {impl: _models("small")[impl].eval()}, impl, image, rounds=3)


@pytest.mark.bench
@pytest.mark.nightly
def test_vlm_bench_ratio_at_768_vit_small(benchmark):
    _ratio(benchmark, {k: m.eval() for k, m in _models("small").items()}, rounds=3)
