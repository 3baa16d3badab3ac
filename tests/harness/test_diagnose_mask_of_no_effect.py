"""A padding mask that keeps every key adds nothing to the attention scores: an attention given
it computes what one given no mask does. It is no ``attn_mask``, and the ops building it (the
inverted keep flags) are no extra ops, so the diagnosis reads past an unpadded batch to what differs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import findings_text

D, H = 8, 2


class _Net(nn.Module):
    """Self-attention in the model's own forward, a position added to its output; ``masked``: written
    out, keys dropped where a padding mask computed from the input says so (here it keeps every key),
    else one fused call given no mask."""

    def __init__(self, *, masked: bool, add_pos: bool = True) -> None:
        super().__init__()
        self.masked, self.add_pos = masked, add_pos
        self.pos = nn.Parameter(torch.randn(6, D))
        self.qkv, self.out = nn.Linear(D, 3 * D), nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = x[:, :, 0] > -1e9
        q, k, v = self.qkv(x).unflatten(-1, (3, H, -1)).unbind(2)
        if self.masked:
            s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D // H)
            s = s.masked_fill(~keep[:, None, None, :], float("-inf"))
            y = self.out(torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v).flatten(2))
        else:
            y = self.out(F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2).flatten(2))
        return y + self.pos if self.add_pos else y


def _diagnosis() -> list[dict]:
    torch.manual_seed(0)
    reference = _Net(masked=False).double().eval()
    candidate = _Net(masked=True, add_pos=False).double().eval()
    x = torch.randn(2, 6, D, dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    return harness.compare(candidate, reference, x, weights=weights).diagnosis


def test_a_mask_keeping_every_key_is_no_attn_mask():
    found = _diagnosis()
    assert not any("attn_mask" in f["text"] for f in found), f"expected no attn_mask finding, got:\n{findings_text(found)}"


def test_the_ops_building_a_mask_of_no_effect_are_no_extra_ops():
    found = _diagnosis()
    assert not any(f["kind"] == "extra_op" for f in found), f"expected no extra op, got:\n{findings_text(found)}"


def test_a_mask_of_no_effect_leaves_the_missing_add_first():
    found = _diagnosis()
    assert found and "add" in found[0]["text"] and "pos" in found[0]["text"], \
        f"expected the missing position add named first, got:\n{findings_text(found)}"
