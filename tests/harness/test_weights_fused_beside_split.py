"""Split query, key and value projections against a fused ``qk`` beside a separate ``v`` take the
tensors by what the attention uses each one as, whichever order either side calls them in.

timm's ConViT fuses query and key into ``qk`` and projects the values only after the attention
(its scores mixed with a positional attention by a learned gate); a port projecting ``q``, ``k`` and
``v`` first is paired by the order of use with ``q`` taking the separate ``v`` and ``k``, ``v`` the
fused rows. Verification moves the tensors between the fused rows and the separate tensor, keeps
the order with which the attention agrees, and makes it in every block built alike. The other way
round (a fused ``qk`` against split ``q``, ``k``, ``v``) the fused tensor's parts and the separate
tensor move alike. And the blocks are never paired crosswise: modules are put in the order of their
twins of one signature only where both sides hold as many of it (three projections per block
against one are no twins).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import harness
from harness.weights import infer_map
from port_toys import randomized, tokens

DIM, HEADS, TOKENS = 16, 2, 5


def _heads(t: torch.Tensor) -> torch.Tensor:
    b, n, c = t.shape
    return t.reshape(b, n, HEADS, c // HEADS).transpose(1, 2)


def _merged(t: torch.Tensor) -> torch.Tensor:
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


_OFFSETS = torch.linspace(-1.0, 1.0, TOKENS * TOKENS * 3, dtype=torch.float64).reshape(TOKENS, TOKENS, 3)


class FusedQueryKey(nn.Module):
    """timm's ConViT gated attention, in its order: query and key from one ``qk``, a positional
    attention from ``pos_proj`` on fixed offsets, mixed by a per-head gate; then the values."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.qk, self.pos_proj = nn.Linear(DIM, 2 * DIM, bias=bias), nn.Linear(3, HEADS)
        self.gating_param = nn.Parameter(torch.ones(HEADS))
        self.v, self.proj = nn.Linear(DIM, DIM, bias=bias), nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k = self.qk(x).chunk(2, -1)
        content = (_heads(q) @ _heads(k).transpose(-1, -2) * (DIM // HEADS) ** -0.5).softmax(-1)
        position = self.pos_proj(_OFFSETS.to(x.dtype)).permute(2, 0, 1).softmax(-1)
        gate = torch.sigmoid(self.gating_param)[:, None, None]
        attention = (1 - gate) * content + gate * position
        return x + self.proj(_merged(attention @ _heads(self.v(x))))


class SplitQueryKeyValue(nn.Module):
    """The same attention with three projections, all made first, its positional weights held by
    itself."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(DIM, DIM, bias=bias) for _ in range(3))
        self.pos_w, self.pos_b = nn.Parameter(torch.zeros(HEADS, 3)), nn.Parameter(torch.zeros(HEADS))
        self.gate = nn.Parameter(torch.ones(HEADS))
        self.out = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = _heads(self.q(x)), _heads(self.k(x)), _heads(self.v(x))
        content = (q @ k.transpose(-1, -2) * (DIM // HEADS) ** -0.5).softmax(-1)
        position = F.linear(_OFFSETS.to(x.dtype), self.pos_w, self.pos_b).permute(2, 0, 1).softmax(-1)
        gate = torch.sigmoid(self.gate)[:, None, None]
        attention = (1 - gate) * content + gate * position
        return x + self.out(_merged(attention @ v))


class TabledFusedQueryKey(nn.Module):
    """Query and key from one ``qk``, the scores scaled per head and given a position table, both
    held by the attention itself; then the values."""

    def __init__(self) -> None:
        super().__init__()
        self.qk, self.v = nn.Linear(DIM, 2 * DIM, bias=False), nn.Linear(DIM, DIM, bias=False)
        self.proj = nn.Linear(DIM, DIM)
        self.temperature = nn.Parameter(torch.ones(HEADS, 1, 1))
        self.pos_bias = nn.Parameter(torch.zeros(HEADS, TOKENS, TOKENS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k = self.qk(x).chunk(2, -1)
        scores = (_heads(q) @ _heads(k).transpose(-1, -2) * self.temperature + self.pos_bias).softmax(-1)
        return x + self.proj(_merged(scores @ _heads(self.v(x))))


class TabledSplitQueryKeyValue(nn.Module):
    """:class:`TabledFusedQueryKey` with three projections, all made first."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(DIM, DIM, bias=False) for _ in range(3))
        self.scale = nn.Parameter(torch.ones(HEADS, 1, 1))
        self.table = nn.Parameter(torch.zeros(HEADS, TOKENS, TOKENS))
        self.out = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = _heads(self.q(x)), _heads(self.k(x)), _heads(self.v(x))
        scores = (q @ k.transpose(-1, -2) * self.scale + self.table).softmax(-1)
        return x + self.out(_merged(scores @ v))


def fused(blocks: int = 1, bias: bool = False) -> nn.Module:
    return randomized(nn.Sequential(*(FusedQueryKey(bias) for _ in range(blocks))), 2)


def split(blocks: int = 1, bias: bool = False) -> nn.Module:
    return randomized(nn.Sequential(*(SplitQueryKeyValue(bias) for _ in range(blocks))), 1)


def _sources(weights: harness.WeightMap, owners: tuple[str, ...]) -> dict[str, tuple]:
    """Per candidate weight of ``owners``: its reference tensors and the rows it takes (or None)."""
    found = {}
    for e in weights.entries:
        if e.candidate.rsplit(".", 1)[0] in owners and e.candidate.endswith("weight"):
            cut = next(((st["start"], st["stop"]) for st in e.steps if st["op"] == "slice"), None)
            found[e.candidate] = (e.reference, cut)
    return found


def test_split_projections_take_the_fused_rows_for_query_and_key_and_the_separate_value():
    weights = harness.map_weights(split(), fused(), tokens())
    got = _sources(weights, ("0.q", "0.k", "0.v"))
    want = {"0.q.weight": (("0.qk.weight",), (0, DIM)), "0.k.weight": (("0.qk.weight",), (DIM, 2 * DIM)),
            "0.v.weight": (("0.v.weight",), None)}
    assert got == want, f"expected the tensors by role {want}, got {got}\n{weights}"


def test_split_projections_beside_a_fused_query_key_verify_in_every_block():
    weights = harness.map_weights(split(blocks=2, bias=True), fused(blocks=2, bias=True), tokens())
    assert weights.verified, f"expected a verified map, got conflicts {weights.conflicts}\n{weights}"


def test_the_order_found_in_one_block_is_made_in_every_block_built_alike():
    weights = harness.map_weights(split(blocks=3), fused(blocks=3), tokens())
    resolved = [n for n in weights.notes if "resolved by running both models" in n]
    assert weights.verified and len(resolved) == 1, (
        f"expected one block resolved and the same order made in the others, got verified={weights.verified}, "
        f"notes {weights.notes}\n{weights}")


def test_a_fused_query_key_concatenates_the_split_query_and_key_and_takes_the_separate_value():
    weights = harness.map_weights(fused(), split(), tokens())
    got = _sources(weights, ("0.qk", "0.v"))
    want = {"0.qk.weight": (("0.q.weight", "0.k.weight"), None), "0.v.weight": (("0.v.weight",), None)}
    assert weights.verified and got == want, (
        f"expected {want} and a verified map, got {got} (verified={weights.verified})\n{weights}")


def test_split_projections_in_every_block_are_never_paired_with_another_block():
    candidate = randomized(nn.Sequential(*(TabledSplitQueryKeyValue() for _ in range(3))), 1)
    reference = randomized(nn.Sequential(*(TabledFusedQueryKey() for _ in range(3))), 2)
    weights = infer_map(candidate, reference, tokens())
    crosswise = {e.candidate: e.reference for e in weights.entries
                 if any(r.split(".")[0] != e.candidate.split(".")[0] for r in e.reference)}
    assert not crosswise, f"expected each block's tensors from its own block, got {crosswise}\n{weights}"
