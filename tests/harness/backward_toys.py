"""Backward-only bugs for the backward-parity tests: the forward stays bitwise equal."""

from __future__ import annotations

import torch
from torch import nn


class _GeluWrongBackward(torch.autograd.Function):
    """GELU whose backward returns 1.01 times the true gradient."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return nn.functional.gelu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            (slope,) = torch.autograd.grad(nn.functional.gelu(x), x, grad)
        return slope * 1.01


class GeluWrongBackward(nn.Module):
    """Drop-in for ``nn.GELU``: bitwise the same forward, a backward 1% too large."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GeluWrongBackward.apply(x)
