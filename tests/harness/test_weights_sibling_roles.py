"""Split query, key and value projections take the rows of a fused one by what the attention
uses each as, not by the order they are called in.

transformers' ViT-style self-attentions call ``self.key``, then ``self.value``, then
``self.query``; a fused ``qkv`` holds the query rows first. The order of use pairs the first
projection called with the first rows; verification tries the other orders of the siblings and
keeps the one with which the attention agrees, and makes the same choice in every block. The
same holds against split projections called query, key, value: the order of use pairs them
crosswise, and the other orders of the peers are tried.
"""

from __future__ import annotations

import torch
from torch import nn

import harness
from port_toys import randomized, tokens

DIM, HEADS = 16, 2
ORDERS = {"query": slice(0, DIM), "key": slice(DIM, 2 * DIM), "value": slice(2 * DIM, 3 * DIM)}
ROLES = ("query", "key", "value")


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, n, c = q.shape
    q, k, v = (t.reshape(b, n, HEADS, c // HEADS).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-1, -2) * (c // HEADS) ** -0.5).softmax(-1)
    return (scores @ v).transpose(1, 2).reshape(b, n, c)


class FusedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.qkv, self.proj = nn.LayerNorm(DIM), nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(_attend(*self.qkv(self.norm(x)).chunk(3, -1)))


class SplitAttention(nn.Module):
    """Separate projections, called in ``order`` (their roles in the attention stay the same)."""

    def __init__(self, order: tuple[str, ...]) -> None:
        super().__init__()
        self.order = order
        self.layernorm = nn.LayerNorm(DIM)
        self.query, self.key, self.value = (nn.Linear(DIM, DIM) for _ in range(3))
        self.output = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layernorm(x)
        made = {name: getattr(self, name)(y) for name in self.order}
        return x + self.output(_attend(made["query"], made["key"], made["value"]))


def fused() -> nn.Module:
    return nn.Sequential(FusedAttention(), FusedAttention())


def split(order: tuple[str, ...]) -> nn.Module:
    return nn.Sequential(SplitAttention(order), SplitAttention(order))


def _rows(weights: harness.WeightMap, block: int, name: str) -> slice | None:
    entry = next(e for e in weights.entries if e.candidate == f"{block}.{name}.weight")
    cut = next((st for st in entry.steps if st["op"] == "slice"), None)
    return None if cut is None else slice(cut["start"], cut["stop"])


def test_split_projections_called_key_value_query_take_the_rows_of_their_role():
    candidate, reference = randomized(split(("key", "value", "query")), 1), randomized(fused(), 2)
    weights = harness.map_weights(candidate, reference, tokens())
    got = {(block, name): _rows(weights, block, name) for block in range(2) for name in ORDERS}
    want = {(block, name): rows for block in range(2) for name, rows in ORDERS.items()}
    assert got == want, f"expected the fused rows by role {want}, got {got}\n{weights}"


def test_split_projections_called_key_value_query_verify():
    candidate, reference = randomized(split(("key", "value", "query")), 1), randomized(fused(), 2)
    weights = harness.map_weights(candidate, reference, tokens())
    assert weights.verified, f"expected a verified map, got conflicts {weights.conflicts}\n{weights}"


def test_split_projections_called_in_their_fused_order_need_no_reordering():
    candidate, reference = randomized(split(("query", "key", "value")), 1), randomized(fused(), 2)
    weights = harness.map_weights(candidate, reference, tokens())
    assert weights.verified and not weights.notes, (
        f"expected the map verified as inferred, got verified={weights.verified}, notes {weights.notes}")


def test_a_fused_projection_concatenates_split_ones_by_their_role_not_their_call_order():
    candidate, reference = randomized(fused(), 1), randomized(split(("key", "value", "query")), 2)
    weights = harness.map_weights(candidate, reference, tokens())
    got = [next(e.reference for e in weights.entries if e.candidate == f"{block}.qkv.weight") for block in range(2)]
    want = [tuple(f"{block}.{name}.weight" for name in ORDERS) for block in range(2)]
    assert weights.verified and got == want, (
        f"expected qkv.weight <- {want} and a verified map, got {got} (verified={weights.verified})\n{weights}")


def test_split_projections_called_key_value_query_take_the_split_ones_of_their_role():
    candidate, reference = randomized(split(("key", "value", "query")), 1), randomized(split(ROLES), 2)
    weights = harness.map_weights(candidate, reference, tokens())
    got = {e.candidate: e.reference[0] for e in weights.entries if e.candidate.split(".")[1] in ROLES}
    want = {key: key for key in got}
    assert weights.verified and got == want, (
        f"expected each split projection to take its namesake and a verified map, got verified={weights.verified}, "
        f"{ {k: v for k, v in got.items() if v != k} }\n{weights}")


def test_split_projections_called_in_one_order_on_both_sides_need_no_reordering():
    candidate, reference = randomized(split(("key", "value", "query")), 1), randomized(split(("key", "value", "query")), 2)
    weights = harness.map_weights(candidate, reference, tokens())
    assert weights.verified and not weights.notes, (
        f"expected the map verified as inferred, got verified={weights.verified}, notes {weights.notes}")
