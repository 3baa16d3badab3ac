"""Consecutive linear layers stand for one fused layer only where none reads another's output.

An attention's query, key, value and output projections are four consecutive layers of one size
(C, C); concatenated they have the shape of the MLP's first layer (4 * C, C). The output
projection reads what the other three computed, so no fused layer computes the four at once:
taking them for one would shift the map by the tensors in between.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import harness
from port_toys import randomized, tokens

DIM, HEADS = 16, 2


def _heads(t: torch.Tensor) -> torch.Tensor:
    b, n, c = t.shape
    return t.reshape(b, n, HEADS, c // HEADS).transpose(1, 2)


class ClassAttention(nn.Module):
    """The class token attends to every token: q from the class token, k and v from all."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.proj = (nn.Linear(DIM, DIM) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(_heads(self.q(x[:, :1])), _heads(self.k(x)), _heads(self.v(x)))
        return self.proj(out.transpose(1, 2).flatten(2))


class ClassBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(DIM), ClassAttention(), nn.LayerNorm(DIM)
        self.fc1, self.fc2 = nn.Linear(DIM, 4 * DIM), nn.Linear(4 * DIM, DIM)
        self.gamma1, self.gamma2 = nn.Parameter(torch.ones(DIM)), nn.Parameter(torch.ones(DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = x[:, :1] + self.gamma1 * self.attn(self.norm1(x))
        cls = cls + self.gamma2 * self.fc2(F.gelu(self.fc1(self.norm2(cls))))
        return torch.cat([cls, x[:, 1:]], 1)


class Reference(nn.Module):
    """A token MLP, then two class-attention blocks: the MLP's first layer comes right before the
    first block's four projections, and every block ends with another (4 * C, C) layer."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(DIM), nn.Linear(DIM, 4 * DIM), nn.Linear(4 * DIM, DIM)
        self.blocks = nn.Sequential(ClassBlock(), ClassBlock())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.fc2(F.gelu(self.fc1(self.norm(x))))
        return self.blocks(x)[:, 0]


class Port(nn.Module):
    """The same computation written functionally, with its own names, each block's layers in a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict({
            "ln_a": nn.LayerNorm(DIM), "wq": nn.Linear(DIM, DIM), "wk": nn.Linear(DIM, DIM),
            "wv": nn.Linear(DIM, DIM), "wo": nn.Linear(DIM, DIM), "ln_m": nn.LayerNorm(DIM),
            "up": nn.Linear(DIM, 4 * DIM), "down": nn.Linear(4 * DIM, DIM)}) for _ in range(2))
        self.scales = nn.ParameterList(nn.Parameter(torch.ones(DIM)) for _ in range(4))
        self.mix = nn.ModuleDict({"ln": nn.LayerNorm(DIM), "up": nn.Linear(DIM, 4 * DIM), "down": nn.Linear(4 * DIM, DIM)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mix["down"](F.gelu(self.mix["up"](self.mix["ln"](x))))
        for i, l in enumerate(self.layers):
            y = l["ln_a"](x)
            out = F.scaled_dot_product_attention(_heads(l["wq"](y[:, :1])), _heads(l["wk"](y)), _heads(l["wv"](y)))
            cls = x[:, :1] + self.scales[2 * i] * l["wo"](out.transpose(1, 2).flatten(2))
            cls = cls + self.scales[2 * i + 1] * l["down"](F.gelu(l["up"](l["ln_m"](cls))))
            x = torch.cat([cls, x[:, 1:]], 1)
        return x[:, 0]


def _mapped() -> tuple[nn.Module, nn.Module, harness.WeightMap]:
    candidate, reference = randomized(Port(), 1), randomized(Reference(), 2)
    return candidate, reference, harness.map_weights(candidate, reference, tokens(), verify=False)


def test_an_attention_output_projection_is_no_sibling_of_its_query_key_and_value():
    _, _, weights = _mapped()
    sources = {e.candidate: e.reference for e in weights.entries}
    wrong = {k: v for k, v in sources.items() if len(v) != 1}
    assert not wrong, f"expected every port tensor fed by one reference tensor, got concatenations {wrong}\n{weights}"


def test_the_mlp_first_layer_takes_the_mlp_first_layer():
    _, _, weights = _mapped()
    sources = {e.candidate: e.reference for e in weights.entries}
    got = [sources.get(f"layers.{i}.up.weight") for i in range(2)]
    want = [(f"blocks.{i}.fc1.weight",) for i in range(2)]
    assert got == want, f"expected the port's MLP layers fed by {want}, got {got}\n{weights}"


def test_the_port_verifies_without_trying_alternatives():
    candidate, reference, _ = _mapped()
    weights = harness.map_weights(candidate, reference, tokens(), max_alternatives=0)
    assert weights.verified, f"expected the first-use map to verify as it is, got conflicts {weights.conflicts}"
