"""A batch norm folded into ``x * scale + shift`` is recognised from the norm's side: the two
candidate tensors taking its tensors become the fold of all four, whatever else the module holding
them keeps (a fused conv-and-norm module's kernel) and wherever the fold is computed (the root's own
forward)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import harness
from helpers import transferred
from port_toys import randomized

C = 6
ROLES = ("weight", "bias", "running_mean", "running_var")


class _ConvNorm(nn.Module):
    """A convolution and its folded norm in one module: kernel, scale and shift side by side."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.scale, self.shift = nn.Parameter(torch.ones(cout)), nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.conv2d(x, self.weight, None, 1, 1) * self.scale[:, None, None] + self.shift[:, None, None])


class _RootFold(nn.Module):
    """The fold computed in the root's forward, beside a submodule and a head of the root's own."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1, bias=False)
        self.scale, self.shift = nn.Parameter(torch.ones(1, C, 1, 1)), nn.Parameter(torch.zeros(1, C, 1, 1))
        self.head = nn.Parameter(torch.randn(4, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x) * self.scale + self.shift)
        return y.mean((2, 3)) @ self.head.t()


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C), nn.ReLU())
        self.fc = nn.Linear(C, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))


def _block(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def _conv_norm_reference() -> nn.Module:
    return randomized(nn.Sequential(_block(3, C), _block(C, C)), 2)


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _sources(weights) -> dict[str, tuple[str, ...]]:
    return {e.candidate: e.reference for e in weights.entries}


def test_a_conv_holding_its_folded_norm_takes_the_fold_of_the_norms_four_tensors():
    candidate = nn.Sequential(_ConvNorm(3, C), _ConvNorm(C, C)).double().eval()
    _, _, weights = transferred(candidate, _conv_norm_reference(), _images())
    got = _sources(weights)
    assert weights.verified and got["0.scale"] == tuple(f"0.1.{r}" for r in ROLES) \
        and got["1.shift"] == tuple(f"1.1.{r}" for r in ROLES), \
        f"expected 0.scale <- the fold of norm 0.1's four tensors, 1.shift <- that of 1.1, verified; got:\n{weights}"


def test_a_port_fusing_each_conv_with_its_folded_norm_passes():
    candidate = nn.Sequential(_ConvNorm(3, C), _ConvNorm(C, C)).double().eval()
    candidate, reference, weights = transferred(candidate, _conv_norm_reference(), _images())
    report = harness.compare(candidate, reference, _images(), weights=weights)
    assert report.passed, report.format()


def test_a_fold_computed_in_the_roots_forward_is_mapped_as_the_fold_and_verified():
    reference = randomized(_Head(), 3)
    _, _, weights = transferred(_RootFold().double().eval(), reference, _images())
    got = _sources(weights)
    assert weights.verified and got["shift"] == tuple(f"body.1.{r}" for r in ROLES) and got["head"] == ("fc.weight",), \
        f"expected shift <- the fold of body.1's four tensors and the map verified; got:\n{weights}"
