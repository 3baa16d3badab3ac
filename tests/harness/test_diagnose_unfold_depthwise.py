"""A depthwise convolution written as ``F.pad`` + ``F.unfold`` + an einsum over each channel's patch
(``'bckhw,kc->bhwc'``, its kernel stored ``(kh, kw, 1, C)``, its output channels-last) against
``nn.Conv2d(groups=C)``: the run is that convolution, so a bug in it is named as on a conv."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import harness
from helpers import findings_text

C, K = 4, 3


class _UnfoldDepthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.kernel, self.bias = nn.Parameter(torch.zeros(K, K, 1, C)), nn.Parameter(torch.zeros(C))
        self.pad = (1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        cols = F.unfold(F.pad(x, self.pad), K).reshape(b, C, K * K, h, w)
        return torch.einsum("bckhw,kc->bhwc", cols, self.kernel.reshape(K * K, C)) + self.bias


class _Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_dw = _UnfoldDepthwise()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.conv_dw(x)).permute(0, 3, 1, 2)


class _Reference(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(C, C, K, padding=1, groups=C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.conv_dw(x))


def _pair() -> tuple[nn.Module, nn.Module, torch.Tensor, object]:
    ref = _Reference().double().eval()
    harness.randomize_(ref, torch.Generator().manual_seed(0))
    cand = _Port().double().eval()
    x = torch.randn(2, C, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weights = harness.map_weights(cand, ref, x)
    weights.transfer(ref, cand)
    assert harness.compare(cand, ref, x, weights=weights).passed
    return cand, ref, x, weights


def test_a_kernel_element_of_an_unfolded_depthwise_conv_is_named_as_the_kernel() -> None:
    cand, ref, x, weights = _pair()
    with torch.no_grad():
        cand.conv_dw.kernel[1, 2, 0, 3] += 1e-3
    text = findings_text(harness.compare(cand, ref, x, weights=weights).diagnosis)
    assert "kernel holds other values than the reference's weight" in text.splitlines()[0], text


def test_an_asymmetric_pad_before_an_unfolded_depthwise_conv_is_named_as_its_padding() -> None:
    cand, ref, x, weights = _pair()
    cand.conv_dw.pad = (0, 2, 0, 2)
    text = findings_text(harness.compare(cand, ref, x, weights=weights).diagnosis)
    assert "padding ((0, 2), (0, 2)) in the candidate, (1, 1) in the reference" in text.splitlines()[0], text
