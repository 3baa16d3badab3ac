"""A map and its non-overlapping patches as tokens are one tensor in two layouts: a patch
embedding written as a linear layer on unfolded (or patchified) patches against a strided conv."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import harness
from harness.adapters import find_adapter
from helpers import transferred


def _image() -> torch.Tensor:
    return torch.randn(2, 3, 16, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _unfolded(x: torch.Tensor, p: int) -> torch.Tensor:
    return F.unfold(x, p, stride=p).transpose(1, 2)


def _patchified(x: torch.Tensor, p: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)


@pytest.mark.parametrize("patches", [_unfolded, _patchified], ids=["unfold (C, p, p)", "patchify (p, p, C)"])
def test_map_brought_to_its_patches_exactly(patches):
    x = _image()
    adapter = find_adapter(x, patches(x, 8))
    assert adapter is not None and torch.equal(adapter.apply(x), patches(x, 8)), \
        f"adapter {adapter and adapter.description} does not give the {patches.__name__} patches"


@pytest.mark.parametrize("patches", [_unfolded, _patchified], ids=["unfold (C, p, p)", "patchify (p, p, C)"])
def test_patches_brought_back_to_their_map_exactly(patches):
    x = _image()
    adapter = find_adapter(patches(x, 8), x)
    assert adapter is not None and torch.equal(adapter.apply(patches(x, 8)), x), \
        f"adapter {adapter and adapter.description} does not give the map back"


class LinearPatches(nn.Module):
    """A patch embedding as a linear layer on unfolded patches."""

    def __init__(self, p: int = 8, dim: int = 32) -> None:
        super().__init__()
        self.p, self.lin = p, nn.Linear(3 * p * p, dim)

    def forward(self, x):
        return self.lin(_unfolded(x, self.p))


class ConvPatches(nn.Module):
    def __init__(self, p: int = 8, dim: int = 32) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, p, p)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def _model(patches: nn.Module) -> nn.Sequential:
    return nn.Sequential(patches, nn.LayerNorm(32), nn.Linear(32, 4)).double().eval()


def test_channel_flip_before_a_linear_patch_embedding_blames_the_patch_module_not_its_linear():
    torch.manual_seed(0)
    x = _image()
    port, original = _model(LinearPatches()), _model(ConvPatches())
    _, _, weights = transferred(port, original, x)
    patch = port[0]
    patch.forward = types.MethodType(lambda self, h: self.lin(_unfolded(h.flip(1), self.p)), patch)
    report = harness.compare(port, original, x, weights=weights)
    assert report.culprit == "0", f"culprit {report.culprit}, expected 0 (its own code flips the channels)\n{report.format()}"
