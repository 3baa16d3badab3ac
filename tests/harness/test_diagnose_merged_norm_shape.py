"""A layer norm over trailing ``(P, C)`` normalizes what one over ``(P * C,)`` does on the input
flattened: the two ``normalized_shape`` are one setting when they cover as many trailing elements
(the weight's values, reshaped by the weight map, are compared as parameters), so the diagnosis
names what does differ."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import findings_text

P, C = 4, 3


class _Pixels(nn.Module):
    """A patch's (pixels, channels) values, a position added, normalized together, projected."""

    def __init__(self, *, merged: bool, add_pos: bool = True) -> None:
        super().__init__()
        self.merged, self.add_pos = merged, add_pos
        self.pos = nn.Parameter(torch.randn(P, C))
        shape = (P * C,) if merged else (P, C)
        self.norm_w, self.norm_b = nn.Parameter(torch.randn(shape)), nn.Parameter(torch.randn(shape))
        self.proj = nn.Linear(P * C, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.add_pos:
            x = x + self.pos
        if self.merged:
            x = F.layer_norm(x.flatten(2), (P * C,), self.norm_w, self.norm_b)
        else:
            x = F.layer_norm(x, (P, C), self.norm_w, self.norm_b).flatten(2)
        return self.proj(x)


def _diagnosis() -> list[dict]:
    torch.manual_seed(0)
    reference = _Pixels(merged=True).double().eval()
    candidate = _Pixels(merged=False, add_pos=False).double().eval()
    x = torch.randn(2, 6, P, C, dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    return harness.compare(candidate, reference, x, weights=weights).diagnosis


def test_a_norm_over_two_trailing_dims_is_not_named_against_one_over_their_product():
    found = _diagnosis()
    assert not any("normalized_shape" in f["text"] for f in found), \
        f"expected no normalized_shape finding, got:\n{findings_text(found)}"


def test_a_norm_over_two_trailing_dims_leaves_the_missing_add_first():
    found = _diagnosis()
    assert found and "add" in found[0]["text"] and "pos" in found[0]["text"], \
        f"expected the missing position add named first, got:\n{findings_text(found)}"
