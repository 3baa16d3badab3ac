"""Weight maps for one tensor of one model that is several of the other's concatenated: a grouped
convolution against one convolution per group, each reading its consecutive channels of one input
(``x.chunk(groups, 1)``, outputs concatenated), in both directions; and a fused ``qkv`` layer
against query, key and value layers where the key layer has no bias, so that the query and value
biases are slices of the fused bias with the key rows left out (torchvision's Swin V2 zeroes
those rows where used). Read backward, the slices join again, the rows no layer holds zeros."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import map_sources, seeded

C, GROUPS, WIDTH = 16, 4, 4  # channels, groups, channels per group


class GroupedBlock(nn.Module):
    """A bottleneck with a grouped 3x3 convolution (torchvision's RegNet names); ``shortcut_first``:
    the projection shortcut called before the main branch (torchvision's ``proj(x) + f(x)``)."""

    def __init__(self, bias: bool = False, shortcut_first: bool = False) -> None:
        super().__init__()
        self.shortcut_first = shortcut_first
        self.a = nn.Sequential(nn.Conv2d(8, C, 1, bias=False), nn.BatchNorm2d(C))
        self.b = nn.Conv2d(C, C, 3, padding=1, groups=GROUPS, bias=bias)
        self.b_norm = nn.BatchNorm2d(C)
        self.proj = nn.Sequential(nn.Conv2d(8, C, 1, bias=False), nn.BatchNorm2d(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = self.proj(x) if self.shortcut_first else None
        y = self.b_norm(self.b(F.relu(self.a(x))))
        return F.relu(y + (self.proj(x) if short is None else short))


class PerGroupConvs(nn.Module):
    """A grouped convolution written as one convolution per group on ``x.chunk(groups, 1)``;
    ``reverse``: the outputs concatenated in the reverse order (a bug)."""

    def __init__(self, bias: bool = False) -> None:
        super().__init__()
        self.parts = nn.ModuleList(nn.Conv2d(WIDTH, WIDTH, 3, padding=1, bias=bias) for _ in range(GROUPS))
        self.reverse = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [part(chunk) for part, chunk in zip(self.parts, x.chunk(GROUPS, 1))]
        return torch.cat(outs[::-1] if self.reverse else outs, 1)


class PerGroupBlock(nn.Module):
    """The same bottleneck, named otherwise, with its grouped convolution written per group and its
    shortcut called last."""

    def __init__(self, bias: bool = False) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(8, C, 1, bias=False), nn.BatchNorm2d(C))
        self.grouped = PerGroupConvs(bias)
        self.norm = nn.BatchNorm2d(C)
        self.shortcut = nn.Sequential(nn.Conv2d(8, C, 1, bias=False), nn.BatchNorm2d(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.grouped(F.relu(self.reduce(x)))) + self.shortcut(x))


def image() -> torch.Tensor:
    return torch.randn(2, 8, 6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def rows(start: int, stop: int, **rest: float) -> dict:
    return {"op": "slice", "dim": 0, "start": start, "stop": stop, **rest}


@pytest.fixture(scope="module")
def per_group_map():
    return harness.map_weights(seeded(PerGroupBlock(bias=True), 1), seeded(GroupedBlock(bias=True), 2), image())


# -- a convolution per group against a grouped one ------------------------------------------------------
def test_convolutions_per_group_take_consecutive_slices_of_the_grouped_kernel(per_group_map):
    found = map_sources(per_group_map)
    assert [found.get(f"grouped.parts.{g}.weight") for g in range(GROUPS)] == [
        (("b.weight",), (rows(g * WIDTH, (g + 1) * WIDTH),)) for g in range(GROUPS)], str(per_group_map)


def test_convolutions_per_group_take_consecutive_slices_of_the_grouped_bias(per_group_map):
    found = map_sources(per_group_map)
    assert [found.get(f"grouped.parts.{g}.bias") for g in range(GROUPS)] == [
        (("b.bias",), (rows(g * WIDTH, (g + 1) * WIDTH),)) for g in range(GROUPS)], str(per_group_map)


def test_a_per_group_port_is_covered_and_verified(per_group_map):
    assert (per_group_map.coverage, per_group_map.unmatched, per_group_map.verified) == (
        1.0, {"candidate": [], "reference": []}, True), str(per_group_map)


def test_a_per_group_port_is_mapped_where_the_reference_calls_its_shortcut_first():
    weights = harness.map_weights(seeded(PerGroupBlock(), 1), seeded(GroupedBlock(shortcut_first=True), 2),
                                  image())
    assert (weights.unmatched, weights.verified, map_sources(weights).get("grouped.parts.3.weight")) == (
        {"candidate": [], "reference": []}, True, (("b.weight",), (rows(3 * WIDTH, C),))), str(weights)


def test_a_correct_per_group_port_passes_through_the_map():
    candidate, reference = seeded(PerGroupBlock(), 1), seeded(GroupedBlock(shortcut_first=True), 2)
    weights = harness.map_weights(candidate, reference, image())
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, image(), weights=weights)
    assert report.passed, report.format()


def test_a_per_group_port_joining_its_outputs_in_another_order_fails_in_that_module():
    candidate, reference = seeded(PerGroupBlock(), 1), seeded(GroupedBlock(), 2)
    weights = harness.map_weights(candidate, reference, image())
    weights.transfer(reference, candidate)
    candidate.grouped.reverse = True
    report = harness.compare(candidate, reference, image(), weights=weights)
    assert (report.passed, report.culprit) == (False, "grouped"), report.format()


def test_read_backward_the_per_group_kernels_give_the_grouped_kernel_back(per_group_map):
    reference = seeded(GroupedBlock(bias=True), 3)
    back = per_group_map.to_reference(per_group_map.to_candidate(reference.state_dict()))
    assert all(torch.equal(back[k], v) for k, v in reference.state_dict().items() if v.is_floating_point()), \
        sorted(back)


# -- a grouped convolution against one per group ---------------------------------------------------------
def test_a_grouped_kernel_takes_the_per_group_kernels_concatenated():
    weights = harness.map_weights(seeded(GroupedBlock(), 1), seeded(PerGroupBlock(), 2), image())
    assert (map_sources(weights).get("b.weight"), weights.verified) == (
        (tuple(f"grouped.parts.{g}.weight" for g in range(GROUPS)),
         ({"op": "concat", "dim": 0, "sizes": [WIDTH] * GROUPS},)), True), str(weights)


# -- split projections where one has no bias, against a fused one -------------------------------------------
HEADS, TOKENS = 2, 5


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, n, _ = q.shape
    q, k, v = (t.reshape(b, n, HEADS, C // HEADS).transpose(1, 2) for t in (q, k, v))
    return (torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(C // HEADS), -1) @ v).transpose(1, 2).reshape(b, n, C)


class FusedAttention(nn.Module):
    """One ``qkv`` layer with a bias; ``zeroed``: the key rows of a copy of the bias zeroed where
    used (torchvision's Swin V2: ``b = qkv.bias.clone(); b[C:2 * C].zero_()``)."""

    def __init__(self, zeroed: bool = False) -> None:
        super().__init__()
        self.zeroed = zeroed
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.qkv.bias
        if self.zeroed:
            bias = bias.clone()
            bias[C:2 * C].zero_()
        return x + self.proj(attention(*F.linear(x, self.qkv.weight, bias).chunk(3, -1)))


class SplitAttention(nn.Module):
    """Query, key and value layers, the key layer without bias (its bias would change no output)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(C, C), nn.Linear(C, C, bias=False), nn.Linear(C, C)
        self.proj = nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(attention(self.q(x), self.k(x), self.v(x)))


def tokens() -> torch.Tensor:
    return torch.randn(2, TOKENS, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture(scope="module", params=[False, True], ids=["whole_bias", "key_rows_zeroed_where_used"])
def split_map(request):
    return harness.map_weights(seeded(SplitAttention(), 1), seeded(FusedAttention(request.param), 2), tokens())


def test_split_biases_beside_a_key_layer_without_one_take_their_rows_of_the_fused_bias(split_map):
    # ``rest``: what the rows no slice takes hold, read backward (the missing key bias: zeros)
    found = map_sources(split_map)
    assert (found.get("q.bias"), found.get("v.bias")) == (
        (("qkv.bias",), (rows(0, C, rest=0.0),)), (("qkv.bias",), (rows(2 * C, 3 * C, rest=0.0),))), str(split_map)


def test_split_layers_beside_a_key_layer_without_bias_are_covered_and_verified(split_map):
    assert (split_map.coverage, split_map.unmatched, split_map.verified) == (
        1.0, {"candidate": [], "reference": []}, True), str(split_map)


def test_read_backward_the_key_rows_no_split_layer_holds_come_back_as_zeros(split_map):
    state = seeded(SplitAttention(), 3).state_dict()
    back = split_map.to_reference(state)
    assert torch.equal(back["qkv.bias"], torch.cat([state["q.bias"], torch.zeros(C, dtype=torch.float64),
                                                    state["v.bias"]])), back["qkv.bias"]


def test_a_saved_map_reads_the_key_rows_back_as_zeros_too(split_map):
    state = seeded(SplitAttention(), 3).state_dict()
    back = harness.load_weight_map(split_map.to_dict()).to_reference(state)
    assert torch.equal(back["qkv.bias"][C:2 * C], torch.zeros(C, dtype=torch.float64)), back["qkv.bias"]
