"""harness.map_weights on ports that apply their projections functionally: per-head weights read by
einsum in any spelling, a bias added to a product's output, weights concatenated where used."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import harness
from port_toys import FusedAttention, attention, randomized, tokens

DIM, HEADS = 16, 2
HEAD_DIM = DIM // HEADS


class EinsumAttention(nn.Module):
    """Self-attention with per-head ``q``/``k``/``v`` weights read by ``torch.einsum(equation, ...)``
    and ``(heads, head_dim)`` biases added to its output; ``x_first``: the tokens are the equation's
    first operand; ``axes``: the einsum output's axes in terms of ``bhnd``. The output projection is
    ``x @ W + b``."""

    def __init__(self, equation: str, shape: tuple[int, ...], x_first: bool = True, axes: str = "bhnd") -> None:
        super().__init__()
        self.equation, self.x_first, self.axes = equation, x_first, axes
        for name in "qkv":
            setattr(self, f"w{name}", nn.Parameter(torch.randn(shape)))
            setattr(self, f"b{name}", nn.Parameter(torch.randn(HEADS, HEAD_DIM)))
        self.wo, self.bo = nn.Parameter(torch.randn(DIM, DIM)), nn.Parameter(torch.randn(DIM))

    def project(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w = getattr(self, f"w{name}")
        out = torch.einsum(self.equation, *((x, w) if self.x_first else (w, x)))
        out = out + getattr(self, f"b{name}")[tuple(slice(None) if a in "hd" else None for a in self.axes)]
        return out.permute([self.axes.index(a) for a in "bhnd"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (self.project(x, name) for name in "qkv")
        return attention(q, k, v, HEAD_DIM ** -0.5).transpose(1, 2).reshape(b, n, d) @ self.wo + self.bo


class HeadsOutEinsumAttention(EinsumAttention):
    """The same with the output projection stored ``(heads, head_dim, C)`` and contracting both
    head axes in one einsum, as Flax's ``DenseGeneral(axis=(-2, -1))`` does."""

    def __init__(self) -> None:
        super().__init__("bnc,hdc->bhnd", (HEADS, HEAD_DIM, DIM))
        self.wo = nn.Parameter(torch.randn(HEADS, HEAD_DIM, DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (self.project(x, name) for name in "qkv")
        return torch.einsum("bhnd,hdc->bnc", attention(q, k, v, HEAD_DIM ** -0.5), self.wo) + self.bo


class SquareEinsumAttention(nn.Module):
    """``q``/``k``/``v`` stored ``(C, C)`` as torch does and read by ``einsum('bnc,dc->bnd')``, each
    with its ``(C,)`` bias added to the product."""

    def __init__(self) -> None:
        super().__init__()
        for name in "qkvo":
            setattr(self, f"w{name}", nn.Parameter(torch.randn(DIM, DIM)))
            setattr(self, f"b{name}", nn.Parameter(torch.randn(DIM)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = ((torch.einsum("bnc,dc->bnd", x, getattr(self, f"w{name}")) + getattr(self, f"b{name}"))
                   .reshape(b, n, HEADS, HEAD_DIM).transpose(1, 2) for name in "qkv")
        return F.linear(attention(q, k, v, HEAD_DIM ** -0.5).transpose(1, 2).reshape(b, n, d), self.wo, self.bo)


class MatmulAttention(SquareEinsumAttention):
    """The same with ``(C_in, C_out)`` matrices: ``x @ W + b`` per projection."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = ((x @ getattr(self, f"w{name}") + getattr(self, f"b{name}"))
                   .reshape(b, n, HEADS, HEAD_DIM).transpose(1, 2) for name in "qkv")
        return F.linear(attention(q, k, v, HEAD_DIM ** -0.5).transpose(1, 2).reshape(b, n, d), self.wo.t(), self.bo)


class ConcatenatedAttention(nn.Module):
    """Separate ``q``/``k``/``v`` tensors fused where used: ``F.linear(x, torch.cat(...), torch.cat(...))``;
    ``transposed``: stored ``(C_in, C_out)`` and concatenated along dim 1 for ``x @ W``."""

    def __init__(self, transposed: bool = False) -> None:
        super().__init__()
        self.transposed = transposed
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(DIM, DIM)) for _ in range(3)])
        self.biases = nn.ParameterList([nn.Parameter(torch.randn(DIM)) for _ in range(3)])
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        if self.transposed:
            qkv = torch.addmm(torch.cat(list(self.biases)), x.reshape(b * n, d), torch.cat(list(self.weights), dim=1))
        else:
            qkv = F.linear(x, torch.cat(list(self.weights)), torch.cat(list(self.biases)))
        q, k, v = qkv.reshape(b, n, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
        return self.proj(attention(q, k, v, HEAD_DIM ** -0.5).transpose(1, 2).reshape(b, n, d))


def mapped(candidate: nn.Module) -> harness.WeightMap:
    return harness.map_weights(randomized(candidate, 1), randomized(FusedAttention(), 2), tokens())


def sources(weights: harness.WeightMap, *keys: str) -> list[tuple]:
    found = {e.candidate: e for e in weights.entries}
    return [(found[k].reference, found[k].transform) if k in found else None for k in keys]


def query_slice(*layout: str) -> str:
    return " + ".join(("slice(dim=0, start=0, stop=16)", *layout))


def test_per_head_einsum_query_weights_are_mapped_as_slices_of_the_fused_qkv():
    weights = mapped(EinsumAttention("bnc,hdc->bhnd", (HEADS, HEAD_DIM, DIM)))
    assert sources(weights, "wq") == [(("qkv.weight",), query_slice("reshape(shape=[2, 8, 16])"))], str(weights)


def test_per_head_einsum_key_and_value_weights_follow_the_query_in_the_fused_qkv():
    weights = mapped(EinsumAttention("bnc,hdc->bhnd", (HEADS, HEAD_DIM, DIM)))
    cuts = [e.steps[0]["start"] for e in weights.entries if e.candidate in ("wk", "wv")]
    assert cuts == [16, 32], str(weights)


def test_per_head_bias_added_to_an_einsum_output_is_a_slice_of_the_fused_bias():
    weights = mapped(EinsumAttention("bnc,hdc->bhnd", (HEADS, HEAD_DIM, DIM)))
    assert sources(weights, "bq") == [(("qkv.bias",), query_slice("reshape(shape=[2, 8])"))], str(weights)


def test_flax_layout_einsum_weights_are_permuted_back_to_the_per_head_layout():
    weights = mapped(EinsumAttention("bnc,chd->bhnd", (DIM, HEADS, HEAD_DIM)))
    expected = query_slice("reshape(shape=[2, 8, 16])", "permute(dims=[2, 0, 1])")
    assert sources(weights, "wq") == [(("qkv.weight",), expected)], str(weights)


@pytest.mark.parametrize("equation, shape, x_first, axes", [
    ("bnc,hdc->bhnd", (HEADS, HEAD_DIM, DIM), True, "bhnd"),
    ("bnc,chd->bhnd", (DIM, HEADS, HEAD_DIM), True, "bhnd"),
    ("hdc,bnc->bhnd", (HEADS, HEAD_DIM, DIM), False, "bhnd"),
    ("...nc,dhc->...hnd", (HEAD_DIM, HEADS, DIM), True, "bhnd"),
    ("b n c, c h d -> b n h d", (DIM, HEADS, HEAD_DIM), True, "bnhd"),
    ("pqc,bnc", (HEADS, HEAD_DIM, DIM), False, "bnhd"),  # implicit output: the letters in alphabetical order
], ids=["heads-first", "flax", "weight-first", "ellipsis", "spaced-tokens-first", "implicit-output"])
def test_einsum_projections_in_any_spelling_give_a_verified_complete_map(equation, shape, x_first, axes):
    weights = mapped(EinsumAttention(equation, shape, x_first, axes))
    assert (weights.verified, weights.coverage) == (True, 1.0), str(weights)


def test_einsum_contracting_two_input_axes_reads_its_weight_in_the_inputs_order():
    weights = mapped(HeadsOutEinsumAttention())
    assert sources(weights, "wo") == [(("proj.weight",), "reshape(shape=[16, 2, 8]) + permute(dims=[1, 2, 0])")], \
        str(weights)


def test_square_einsum_projections_with_added_biases_are_slices_of_the_fused_qkv():
    weights = mapped(SquareEinsumAttention())
    assert sources(weights, "wk", "bk") == [(("qkv.weight",), "slice(dim=0, start=16, stop=32)"),
                                            (("qkv.bias",), "slice(dim=0, start=16, stop=32)")], str(weights)


def test_matmul_projections_with_added_biases_are_transposed_slices_of_the_fused_qkv():
    weights = mapped(MatmulAttention())
    assert sources(weights, "wv", "bv") == [(("qkv.weight",), "slice(dim=0, start=32, stop=48) + transpose(dims=[0, 1])"),
                                            (("qkv.bias",), "slice(dim=0, start=32, stop=48)")], str(weights)


def test_weights_concatenated_where_used_are_slices_of_the_fused_qkv():
    weights = mapped(ConcatenatedAttention())
    assert sources(weights, "weights.1", "biases.1") == [(("qkv.weight",), "slice(dim=0, start=16, stop=32)"),
                                                         (("qkv.bias",), "slice(dim=0, start=16, stop=32)")], str(weights)


def test_input_major_weights_concatenated_for_a_product_are_transposed_slices_of_the_fused_qkv():
    weights = mapped(ConcatenatedAttention(transposed=True))
    assert sources(weights, "weights.2") == [(("qkv.weight",), "slice(dim=0, start=32, stop=48) + transpose(dims=[0, 1])")], \
        str(weights)


def test_a_map_of_weights_concatenated_where_used_is_verified():
    weights = mapped(ConcatenatedAttention())
    assert (weights.verified, weights.coverage) == (True, 1.0), str(weights)
