"""A weight-standardized conv written out (the kernel's mean, variance and ``sqrt(var + eps)``, then
a gain) against one that standardizes with ``F.batch_norm`` on the kernel (timm's
``ScaledStdConv2d``): the run of ops is that batch norm written out, and where it differs its eps or
its variance is named, not its first op as an extra one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import findings_text

C_IN, C_OUT, K = 3, 8, 3


class _BatchNormStandardized(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(C_OUT, C_IN, K, K)), nn.Parameter(torch.zeros(C_OUT))
        self.gain = nn.Parameter(torch.ones(C_OUT, 1, 1, 1))
        self.scale = (C_IN * K * K) ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, C_OUT, -1), None, None, weight=(self.gain * self.scale).view(-1),
                         training=True, momentum=0.0, eps=1e-5).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, padding=1)


class _WrittenOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(torch.randn(C_OUT, C_IN, K, K)), nn.Parameter(torch.zeros(C_OUT))
        self.g = nn.Parameter(torch.ones(C_OUT, 1, 1, 1))
        self.eps, self.unbiased = 1e-5, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w
        mean, var = w.mean(dim=(1, 2, 3), keepdim=True), w.var(dim=(1, 2, 3), unbiased=self.unbiased, keepdim=True)
        w = (w - mean) / torch.sqrt(var + self.eps) * (self.g * (C_IN * K * K) ** -0.5)
        return F.conv2d(x, w, self.b, padding=1)


def _why(change) -> tuple[str, str]:
    g = torch.Generator().manual_seed(0)
    candidate, reference = _WrittenOut().double().eval(), _BatchNormStandardized().double().eval()
    harness.randomize_(reference, g)
    x = torch.randn(1, C_IN, 8, 8, generator=g, dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    change(candidate)
    report = harness.compare(candidate, reference, x, weights=weights)
    return (report.diagnosis[0]["text"] if report.diagnosis else ""), findings_text(report.diagnosis)


def test_another_standardization_eps_is_named_as_the_batch_norm_eps():
    why, all_ = _why(lambda m: setattr(m, "eps", 1e-3))
    assert "hand-written batch_norm adds eps=0.001 under the square root where the reference's batch_norm has " \
           "eps=1e-05" in why, f"expected the standardization's eps named, got:\n{all_}"


def test_an_unbiased_kernel_variance_is_named_as_the_variance_correction():
    why, all_ = _why(lambda m: setattr(m, "unbiased", True))
    assert "hand-written batch_norm uses an unbiased variance (var correction=1)" in why, \
        f"expected the unbiased variance named, got:\n{all_}"
