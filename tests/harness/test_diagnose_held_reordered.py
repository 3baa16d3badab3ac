"""A culprit without a twin (a linear the reference applies in a functional, a patch stem ported as
unfold and a linear) holding the values the weight map puts there in another order is said so, as
an operand is: a square weight stored transposed as its dims permuted, a stem kernel's input
channels reversed (RGB read as BGR) in the reference kernel's own layout, the map's reshape
undone. Other values are still said to be other values."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import compare_port, findings_text

DIM = 8


class _FunctionalMix(nn.Module):
    """A norm, then a square projection applied with ``F.linear`` on parameters of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(DIM)
        self.weight, self.bias = nn.Parameter(torch.randn(DIM, DIM)), nn.Parameter(torch.randn(DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.linear(self.norm(x), self.weight, self.bias))


class _ModuleMix(nn.Module):
    """The same with an ``nn.Linear``, which the reference has no module for."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.proj = nn.LayerNorm(DIM), nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(self.norm(x)))


class _ConvPatchesCalledFunctionally(nn.Module):
    """A 4x4 stride-4 patch conv whose ``nn.Conv2d`` holds the kernel, applied with ``F.conv2d``
    (no call of the module to twin), then the tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, DIM, 4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.proj.weight, self.proj.bias, stride=4).flatten(2).transpose(1, 2)


class _UnfoldPatches(nn.Module):
    """The same ported as ``F.unfold`` then an ``nn.Linear`` over each patch's ``(C, p, p)`` values."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3 * 4 * 4, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(F.unfold(x, 4, stride=4).transpose(1, 2))


def _why(candidate: nn.Module, reference: nn.Module, x: torch.Tensor, change) -> str:
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    report = compare_port(candidate.double().eval(), reference.double().eval(), x, change)
    assert not report.passed, "the changed weight went unnoticed"
    return findings_text(report.diagnosis)


def _tokens() -> torch.Tensor:
    return torch.randn(2, 5, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_a_square_weight_without_a_twin_stored_transposed_is_named_permuted() -> None:
    why = _why(_ModuleMix(), _FunctionalMix(), _tokens(), lambda m: m.proj.weight.copy_(m.proj.weight.t().clone()))
    expected = "proj: weight holds the reference's weight with its dims permuted (1, 0) (stored transposed?)"
    assert expected in why.splitlines()[0], f"expected the weight named transposed, got:\n{why}"


def test_a_patch_linear_reading_bgr_is_named_input_channels_reversed_in_the_kernel_layout() -> None:
    def bgr(m: nn.Module) -> None:
        w = m.embed.weight.view(DIM, 3, 16)
        m.embed.weight.copy_(w.flip(1).reshape(DIM, 48).clone())
    why = _why(_UnfoldPatches(), _ConvPatchesCalledFunctionally(), _images(), bgr)
    expected = "embed: weight holds the reference's proj.weight reordered: input channels reversed"
    assert expected in why.splitlines()[0], f"expected the kernel's input channels reversed, got:\n{why}"


def test_a_weight_without_a_twin_holding_other_values_says_other_values() -> None:
    why = _why(_ModuleMix(), _FunctionalMix(), _tokens(), lambda m: m.proj.weight.add_(0.1))
    assert "proj: weight holds other values than the reference's weight" in why.splitlines()[0], why
