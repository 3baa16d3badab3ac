"""Weight maps for tensors a model uses only in part: a fused tensor joined where used from stored
parts and zeros, a stored fused tensor whose rows the forward replaces; and how much verification
tries where the models genuinely differ."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import harness
import harness.api
from harness.weights import _first_uses, _runner
from helpers import map_sources, seeded

C = 8


def attention(qkv: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
    q, k, v = qkv.chunk(3, dim=-1)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(C), dim=-1)
    return proj(weights @ v)


class ZeroedKeyBias(nn.Module):
    """One fused ``qkv`` linear layer whose bias has its key rows replaced by zeros where used
    (torchvision's Swin V2)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.qkv.bias.clone()
        length = bias.numel() // 3
        bias[length:2 * length].zero_()
        return attention(F.linear(x, self.qkv.weight, bias), self.proj)


class QueryValueBias(nn.Module):
    """The same attention storing a query bias and a value bias and joining them with a zero key
    bias where used (timm's Swin V2 with a zero buffer, BEiT with ``zeros_like``)."""

    def __init__(self, zeros_where_used: bool = False) -> None:
        super().__init__()
        self.zeros_where_used = zeros_where_used
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("k_bias", torch.zeros(C), persistent=False)
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.proj = nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k_bias = torch.zeros_like(self.v_bias) if self.zeros_where_used else self.k_bias
        bias = torch.cat((self.q_bias, k_bias, self.v_bias))
        return attention(F.linear(x, self.qkv.weight, bias), self.proj)


class Mlps(nn.Module):
    """Three two-layer perceptrons of square layers; ``act`` replaces the middle one's GELU."""

    def __init__(self, act: nn.Module | None = None) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(nn.Sequential(nn.Linear(C, C), nn.GELU(), nn.Linear(C, C)) for _ in range(3)))
        if act is not None:
            self.blocks[1][1] = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def tokens() -> torch.Tensor:
    return torch.randn(1, 5, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def cut(start: int, stop: int) -> tuple:
    return ({"op": "slice", "dim": 0, "start": start, "stop": stop},)


@pytest.mark.parametrize("zeros_where_used", [False, True], ids=["zero buffer", "zeros_like"])
def test_parts_joined_with_zeros_where_used_are_cut_from_the_references_fused_tensor(zeros_where_used):
    weights = harness.map_weights(seeded(QueryValueBias(zeros_where_used), 1), seeded(ZeroedKeyBias(), 2),
                                  tokens(), verify=False)
    found = map_sources(weights)
    expected = ((("qkv.bias",), cut(0, C)), (("qkv.bias",), cut(2 * C, 3 * C)))
    assert (found.get("q_bias"), found.get("v_bias")) == expected, str(weights)


def test_a_map_cutting_parts_joined_with_zeros_verifies_against_a_reference_that_replaces_those_rows():
    weights = harness.map_weights(seeded(QueryValueBias(), 1), seeded(ZeroedKeyBias(), 2), tokens())
    assert weights.verified, str(weights)


def test_rows_a_model_replaces_in_a_copy_of_a_tensor_before_using_it_are_no_use_of_the_tensor():
    used, _ = _first_uses(ZeroedKeyBias().double(), _runner(tokens(), None, "reference"))
    assert next(t.op for t in used if t.key == "qkv.bias") == "linear", [(t.key, t.op) for t in used]


def test_a_stored_fused_tensor_takes_the_parts_the_reference_joins_with_zeros_where_used_and_zeros_between():
    weights = harness.map_weights(seeded(ZeroedKeyBias(), 1), seeded(QueryValueBias(), 2), tokens(),
                                  verify=False)
    expected = (("q_bias", "v_bias"), ({"op": "concat", "dim": 0, "sizes": [C, C]},
                                       {"op": "insert", "dim": 0, "start": C, "size": C, "value": 0.0}))
    assert map_sources(weights).get("qkv.bias") == expected, str(weights)


class ReshapedQueryValueBias(QueryValueBias):
    """The same attention storing its query bias as a row ``(1, C)``, flattened where joined."""

    def __init__(self) -> None:
        super().__init__()
        self.q_bias = nn.Parameter(torch.zeros(1, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.cat((self.q_bias.reshape(C), self.k_bias, self.v_bias))
        return attention(F.linear(x, self.qkv.weight, bias), self.proj)


def test_a_tensor_the_reference_joins_where_used_from_a_re_laid_out_part_is_unmatched_with_the_reason():
    weights = harness.map_weights(seeded(ZeroedKeyBias(), 1), seeded(ReshapedQueryValueBias(), 2), tokens(),
                                  verify=False)
    why = weights.reason("candidate", "qkv.bias")
    assert "qkv.bias" in weights.unmatched["candidate"] and all(
        part in why for part in (f"rows 0:{C} q_bias", f"rows {C}:{2 * C} zeros", f"rows {2 * C}:{3 * C} v_bias",
                                 "cannot express")), why


def test_verification_tries_no_alternative_around_a_parameter_free_module_that_received_what_its_twin_did(monkeypatch):
    # trials run without a diagnosis; an unverified map's conflicts are then explained by one with it
    trials = []
    compare = harness.api._compare
    monkeypatch.setattr(harness.api, "_compare", lambda c, r, i, o, **k: trials.extend([1] * (not o.diagnose))
                        or compare(c, r, i, o, **k))
    weights = harness.map_weights(seeded(Mlps(nn.Tanh()), 1), seeded(Mlps(), 2), tokens())
    assert (weights.verified, len(trials)) == (False, 1), str(weights)
