"""Tracer overhead: traced / plain forward of convnext_tiny at 224, summary and full storage.

Benchmarks only (``tox -- -m bench --benchmark-only``); under the default suite each runs once as a smoke test.
"""

import pytest
import torch

import harness
from harness import Tracer


@pytest.fixture(scope="module")
def model_and_input():
    candidate, _ = harness.get_pair("convnext_tiny").build(dtype=torch.float32)
    return candidate, torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _traced(model, x, mode):
    with torch.no_grad(), Tracer(model, mode=mode) as tracer:
        model(x)
    return len(tracer)


@pytest.mark.bench
@pytest.mark.benchmark(group="tracer-overhead-convnext_tiny-224")
@pytest.mark.parametrize("mode", ["plain", "summary", "full"])
def test_bench_tracer_overhead(benchmark, model_and_input, mode):
    model, x = model_and_input
    if mode == "plain":
        with torch.no_grad():
            out = benchmark(model, x)
        assert out.shape == (1, 1000)
    else:
        records = benchmark(_traced, model, x, mode)
        assert records > 100  # every block's submodules were recorded
