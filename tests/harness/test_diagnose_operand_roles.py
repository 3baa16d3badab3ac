"""A scale and shift written ``weight * y + bias`` against ``torch.addcmul(bias, weight, y)`` (ConvNeXt V2's
GRN in transformers against timm): a differing operand is compared with the reference's tensor of its
name, not with the first one the reference passes."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import findings_text

C = 6


class _Grn(nn.Module):
    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.weight, self.bias, self.fused = nn.Parameter(torch.zeros(C)), nn.Parameter(torch.zeros(C)), fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.norm(dim=1, keepdim=True)
        y = x * (n / (n.mean(dim=-1, keepdim=True) + 1e-6))
        return x + (torch.addcmul(self.bias, self.weight, y) if self.fused else self.weight * y + self.bias)


def test_a_scale_element_off_against_an_addcmul_names_the_references_scale_not_its_shift() -> None:
    ref = _Grn(fused=True).double()
    harness.randomize_(ref, torch.Generator().manual_seed(0))
    cand = _Grn(fused=False).double()
    cand.load_state_dict(ref.state_dict())
    with torch.no_grad():
        cand.weight[2] += 0.05
    x = torch.randn(2, 5, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    text = findings_text(harness.compare(cand, ref, x).diagnosis)
    assert "weight holds other values than the reference's weight" in text.splitlines()[0], text
