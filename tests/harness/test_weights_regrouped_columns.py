"""A layer whose input columns one port lays out ``(a, b)`` and the other ``(b, a)``: attention heads
concatenated ``(head_dim, heads)`` before the output projection where the reference concatenates
``(heads, head_dim)``, a convolution after a channel shuffle its twin does not make. The map regroups
that weight's columns, the verification finds the regrouping from the sizes alone (no head count is
named anywhere), and the port passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import harness
from helpers import transferred
from port_toys import randomized

C, HEADS = 24, 4  # head_dim 6: (heads, head_dim) and (head_dim, heads) are different orders


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
        return self.proj(self.heads(F.scaled_dot_product_attention(q, k, v)).reshape(b, n, C))

    def heads(self, o: torch.Tensor) -> torch.Tensor:
        return o.transpose(1, 2)                                                  # (B, N, heads, head_dim)


class _HeadsLast(_Attention):
    def heads(self, o: torch.Tensor) -> torch.Tensor:
        return o.permute(0, 2, 3, 1)                                              # (B, N, head_dim, heads)


class _Flipped(_Attention):
    def heads(self, o: torch.Tensor) -> torch.Tensor:  # features reversed: a column order that is no regrouping
        return o.transpose(1, 2).flip(-1, -2)


class _Block(nn.Module):
    def __init__(self, attention: type[_Attention] = _Attention) -> None:
        super().__init__()
        self.norm, self.attn, self.fc = nn.LayerNorm(C), attention(), nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm(x))
        return x + self.fc(x)


def _tokens() -> torch.Tensor:
    return torch.randn(2, 5, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture(scope="module")
def port():
    return transferred(randomized(_Block(_HeadsLast), 1), randomized(_Block(), 2), _tokens())


def test_a_projection_reading_heads_concatenated_head_dim_first_takes_its_twin_with_columns_regrouped(port):
    _, _, weights = port
    steps = {e.candidate: e.transform for e in weights.entries}
    expected = "reshape(shape=[24, 4, 6]) + permute(dims=[0, 2, 1]) + reshape(shape=[24, 24])"
    assert weights.verified and steps["attn.proj.weight"] == expected, \
        f"expected a verified map with attn.proj.weight <- [{expected}], got:\n{weights}"


def test_a_port_concatenating_heads_head_dim_first_passes(port):
    candidate, reference, _ = port
    report = harness.compare(candidate, reference, _tokens(), weights=port[2])
    assert report.passed, report.format()


def test_the_regrouped_columns_read_back_give_the_reference_its_weight(port):
    candidate, reference, weights = port
    back = weights.to_reference(dict(candidate.state_dict()))
    assert not torch.equal(candidate.attn.proj.weight, reference.attn.proj.weight) \
        and torch.equal(back["attn.proj.weight"], reference.attn.proj.weight), \
        "the candidate should hold attn.proj.weight with its columns regrouped, and reading the map backward " \
        "should give the reference its own"


def test_a_projection_reading_heads_in_another_order_is_not_verified():
    weights = harness.map_weights(randomized(_Block(_Flipped), 1), randomized(_Block(), 2), _tokens())
    assert weights.verified is False and any(c["module"] == "attn" for c in weights.conflicts), str(weights)


GROUPS, CHANNELS = 3, 12


class _Pointwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, CHANNELS, 1), nn.Conv2d(CHANNELS, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.mix(self.stem(x)))

    def mix(self, y: torch.Tensor) -> torch.Tensor:
        return y


class _Shuffled(_Pointwise):
    """ShuffleNet's channel shuffle (groups of 3) before the conv: channels ``(g, c/g)`` read as ``(c/g, g)``."""

    def mix(self, y: torch.Tensor) -> torch.Tensor:
        b, c, h, w = y.shape
        return y.reshape(b, GROUPS, c // GROUPS, h, w).transpose(1, 2).reshape(b, c, h, w)


def test_a_conv_after_a_channel_shuffle_takes_its_twin_with_input_channels_regrouped():
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    candidate, reference, weights = transferred(randomized(_Shuffled(), 1), randomized(_Pointwise(), 2), x)
    steps = {e.candidate: e.transform for e in weights.entries}
    report = harness.compare(candidate, reference, x, weights=weights)
    assert weights.verified and report.passed and "permute(dims=[0, 2, 1, 3, 4])" in steps["conv.weight"], \
        f"expected conv.weight's input channels regrouped and the port passing, got:\n{weights}\n{report.format()}"
