"""Helpers shared by the tests of the harness and of several model families.

Import them as ``from helpers import ...`` (``tests/`` is on ``sys.path`` through the rootdir conftest).
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

# The dtypes every parity test runs at (float32: the dtype users run; float64: tight enough to tell a
# bug from rounding), with readable test ids.
PARITY_DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]


def inject_forward(module: torch.nn.Module, forward: Callable[..., Any]) -> torch.nn.Module:
    """Replace ``module``'s forward by ``forward(self, ...)`` on this instance only: an injected bug
    that the comparison must localize (the class, and every other instance, stay correct)."""
    module.forward = types.MethodType(forward, module)
    return module


def swap_values_(a: torch.Tensor, b: torch.Tensor) -> None:
    """Exchange the values of two tensors of one shape in place (e.g. two weights mixed up by a port)."""
    with torch.no_grad():
        kept = a.detach().clone()
        a.copy_(b)
        b.copy_(kept)


class RunsCode:
    """Unpickling this calls exec(), which writes ``marker``: what a malicious checkpoint does.
    A loader that refuses it leaves ``marker`` absent."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def write_malicious_checkpoint(path: Path, state: dict[str, torch.Tensor], marker: Path, *, key: str = "hook") -> Path:
    """``torch.save`` of ``state`` plus, under ``key``, an object whose unpickling runs code (writes ``marker``)."""
    torch.save({**state, key: RunsCode(marker)}, path)
    return path


def image_224() -> torch.Tensor:
    """The seeded 1x3x224x224 image the forward benchmarks time."""
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def inference_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One forward as a user runs inference (no autograd): what the forward benchmarks time."""
    with torch.inference_mode():
        return model(x)
