"""A class attention (CaiT, VOLO) projects its query from the class token and its keys and values
from all tokens. A port with three layers that projects the query first, against one fused key-value
layer used before the query layer: the query layer takes the query's weight, the key and value
layers the two halves of the fused one; the query and key layers, read on different inputs, are no
fused query-key projection that would leave the value layer the query's weight."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import transferred
from port_toys import randomized, tokens

DIM, HEADS = 16, 2


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, 1, C) query against (B, N, C) keys and values, per head, as (B, 1, C)."""
    b, n, c = k.shape
    heads = [t.reshape(b, -1, HEADS, c // HEADS).transpose(1, 2) for t in (q, k, v)]
    out = torch.nn.functional.scaled_dot_product_attention(*heads)
    return out.transpose(1, 2).reshape(b, 1, c)


class _FusedKeyValue(nn.Module):
    """timm's order: the fused key-value layer on all tokens, then the query on the class token."""

    def __init__(self) -> None:
        super().__init__()
        self.kv = nn.Linear(DIM, 2 * DIM, bias=False)
        self.q = nn.Linear(DIM, DIM, bias=False)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.proj(_attend(self.q(x[:, :1]), k, v))


class _QueryFirst(nn.Module):
    """Three layers, the query projected first."""

    def __init__(self) -> None:
        super().__init__()
        self.wq = nn.Linear(DIM, DIM, bias=False)
        self.wk = nn.Linear(DIM, DIM, bias=False)
        self.wv = nn.Linear(DIM, DIM, bias=False)
        self.out = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.wq(x[:, :1])
        return self.out(_attend(q, self.wk(x), self.wv(x)))


def _sources(weights) -> dict[str, tuple]:
    return {e.candidate: (e.reference, tuple(s for s in e.steps if s["op"] == "slice")) for e in weights.entries}


def test_a_query_projected_first_takes_the_query_layer_and_the_keys_and_values_the_fused_layer():
    _, _, weights = transferred(_QueryFirst().double().eval(), randomized(_FusedKeyValue(), 1), tokens())
    got = _sources(weights)
    want = {"wq.weight": (("q.weight",), ()),
            "wk.weight": (("kv.weight",), ({"op": "slice", "dim": 0, "start": 0, "stop": DIM},)),
            "wv.weight": (("kv.weight",), ({"op": "slice", "dim": 0, "start": DIM, "stop": 2 * DIM},))}
    assert {k: got[k] for k in want} == want, f"expected wq <- q, wk and wv <- the halves of kv; got:\n{weights}"


def test_a_port_projecting_the_query_first_passes():
    candidate, reference, weights = transferred(_QueryFirst().double().eval(), randomized(_FusedKeyValue(), 1),
                                                tokens())
    report = harness.compare(candidate, reference, tokens(), weights=weights)
    assert weights.verified and report.passed, f"expected a verified map and a pass; got:\n{weights}\n{report.format()}"


def test_a_fused_key_value_layer_takes_the_key_and_value_layers_of_a_query_first_reference():
    _, _, weights = transferred(_FusedKeyValue().double().eval(), randomized(_QueryFirst(), 1), tokens())
    got = {e.candidate: e.reference for e in weights.entries}
    assert (got["kv.weight"], got["q.weight"]) == (("wk.weight", "wv.weight"), ("wq.weight",)), \
        f"expected kv <- wk + wv and q <- wq; got:\n{weights}"
