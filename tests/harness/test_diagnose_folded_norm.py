"""A batch norm folded ahead of time into a stored scale and shift, ``x * scale + shift``, stands in
the place of the reference's batch norm: its two tensors are compared with what the norm folds
into, ``weight / sqrt(running_var + eps)`` and ``bias - running_mean * scale``, so the finding names
the one holding other values and its channels, not the statistics it was paired with by position."""

import pytest
import torch
from torch import nn

from harness.diagnose import diagnose_modules
from helpers import findings_text

CHANNELS = 6


class FoldedNorm(nn.Module):
    """An inference-time batch norm stored folded, per channel."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(CHANNELS))
        self.shift = nn.Parameter(torch.zeros(CHANNELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale[:, None, None] + self.shift[:, None, None]


def _norm(dtype: torch.dtype) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(0)
    bn = nn.BatchNorm2d(CHANNELS).to(dtype).eval()
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.randn(CHANNELS, generator=g, dtype=dtype))
        bn.running_var.copy_(torch.rand(CHANNELS, generator=g, dtype=dtype) + 0.5)
    return bn


def _folded(bn: nn.BatchNorm2d, role: str | None = None, channel: int = 3) -> FoldedNorm:
    """``bn`` folded, the ``role`` tensor (scale or shift) off by 1e-2 at ``channel``."""
    folded = FoldedNorm().to(bn.weight.dtype).eval()
    with torch.no_grad():
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        folded.scale.copy_(scale)
        folded.shift.copy_(bn.bias - bn.running_mean * scale)
        if role is not None:
            getattr(folded, role)[channel] += 1e-2
    return folded


def _diagnosed(cand: nn.Module, ref: nn.Module, dtype: torch.dtype = torch.float64) -> list[dict]:
    x = torch.randn(2, CHANNELS, 4, 4, dtype=dtype, generator=torch.Generator().manual_seed(1))
    return diagnose_modules(cand, ref, (x,), {})


def test_a_right_fold_is_no_finding():
    bn = _norm(torch.float64)
    findings = _diagnosed(_folded(bn), bn)
    assert findings == [], f"a right fold is blamed:\n{findings_text(findings)}"


@pytest.mark.parametrize("role", ["scale", "shift"])
def test_a_folded_tensor_off_at_one_channel_is_named_with_that_channel(role):
    bn = _norm(torch.float64)
    findings = _diagnosed(_folded(bn, role), bn)
    first = findings[0]["text"] if findings else ""
    assert f"operand {role}, the {role} of a batch norm folded" in first and "1 of 6 channels ([3]" in first, \
        f"the wrong {role} is not named, at channel 3:\n{findings_text(findings)}"


def test_a_fold_between_a_conv_and_an_activation_names_the_wrong_tensor():
    bn = _norm(torch.float64)
    conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1).double()
    ref, cand = (nn.Sequential(conv, norm, nn.ReLU()).eval() for norm in (bn, _folded(bn, "shift")))
    findings = _diagnosed(cand, ref)
    first = findings[0]["text"] if findings else ""
    assert "operand 1.shift" in first and "([3]" in first, \
        f"the wrong shift of a folded norm inside a block is not named:\n{findings_text(findings)}"


def test_a_fold_stored_at_float32_is_compared_beyond_its_rounding():
    bn = _norm(torch.float32)
    findings = _diagnosed(_folded(bn, "shift", channel=5), bn, torch.float32)
    first = findings[0]["text"] if findings else ""
    assert "operand shift" in first and "1 of 6 channels ([5]" in first, \
        f"float32 rounding of the fold is taken for a wrong value, or the wrong one is missed:\n{findings_text(findings)}"
