"""Linears written as einsums over kernels of more than two dims: q/k/v as one ``(3, heads, head_dim, C)``
parameter (``'bnc,shdc->sbhnd'``) and an output projection merging the heads (``'bhnd,hdc->bnc'``). Each is
one ``linear``, as ``nn.Linear`` computes it, so the op streams of a ViT port align with timm's."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import harness
from harness.diagnose import record_ops
from helpers import findings_text

timm_vit = pytest.importorskip("timm.models.vision_transformer")

C, H = 16, 2
D = C // H


class _Port(nn.Module):
    """Two ViT blocks, a final norm and a head, written as one module over flat parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.ParameterDict()
        for i in range(2):
            for k, shape in {"ln0_w": (C,), "ln0_b": (C,), "qkv_k": (3, H, D, C), "qkv_b": (3, H, D), "out_k": (H, D, C),
                             "out_b": (C,), "ln1_w": (C,), "ln1_b": (C,), "fc1_k": (C, 4 * C), "fc1_b": (4 * C,),
                             "fc2_k": (4 * C, C), "fc2_b": (C,)}.items():
                self.p[f"b{i}_{k}"] = nn.Parameter(torch.zeros(shape))
        for k, shape in {"norm_w": (C,), "norm_b": (C,), "head_k": (C, 10), "head_b": (10,)}.items():
            self.p[k] = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(2):
            x = self.block(x, {k[3:]: v for k, v in self.p.items() if k.startswith(f"b{i}_")})
        p = self.p
        return F.layer_norm(x, (C,), p["norm_w"], p["norm_b"], 1e-6)[:, 0] @ p["head_k"] + p["head_b"]

    def block(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        y = F.layer_norm(x, (C,), p["ln0_w"], p["ln0_b"], 1e-6)
        qkv = torch.einsum("bnc,shdc->sbhnd", y, p["qkv_k"]) + p["qkv_b"][:, None, :, None, :]
        a = (torch.einsum("bhnd,bhmd->bhnm", qkv[0], qkv[1]) * D ** -0.5).softmax(-1)
        o = torch.einsum("bhnd,hdc->bnc", torch.einsum("bhnm,bhmd->bhnd", a, qkv[2]), p["out_k"]) + p["out_b"]
        x = x + o
        y = F.gelu(F.layer_norm(x, (C,), p["ln1_w"], p["ln1_b"], 1e-6) @ p["fc1_k"] + p["fc1_b"])
        return x + y @ p["fc2_k"] + p["fc2_b"]


class _Tail(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.head = nn.LayerNorm(C, eps=1e-6), nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x)[:, 0])


def test_a_fused_qkv_kernel_of_four_dims_applied_by_einsum_with_its_bias_is_one_linear() -> None:
    port = _Port().double()
    x = torch.randn(2, 5, C, dtype=torch.float64)
    _, stream, _ = record_ops(port, (x,), {})
    computed = [(op.name, sorted(op.params.values())) for op in stream if op.kind == "compute"]
    assert computed[1] == ("linear", ["p.b0_qkv_b", "p.b0_qkv_k"]), computed


def test_a_head_merging_output_kernel_applied_by_einsum_with_its_bias_is_one_linear() -> None:
    port = _Port().double()
    x = torch.randn(2, 5, C, dtype=torch.float64)
    _, stream, _ = record_ops(port, (x,), {})
    computed = [(op.name, sorted(op.params.values())) for op in stream if op.kind == "compute"]
    assert computed[3] == ("linear", ["p.b0_out_b", "p.b0_out_k"]), computed


def test_an_output_kernel_element_of_an_einsum_vit_with_a_head_names_that_kernel() -> None:
    ref = nn.Sequential(timm_vit.Block(C, H, qkv_bias=True), timm_vit.Block(C, H, qkv_bias=True), _Tail()).double().eval()
    harness.randomize_(ref, torch.Generator().manual_seed(0))
    cand = _Port().double().eval()
    x = torch.randn(2, 7, C, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weights = harness.map_weights(cand, ref, x)
    weights.transfer(ref, cand)
    assert harness.compare(cand, ref, x, weights=weights).passed
    with torch.no_grad():
        cand.p["b1_out_k"][1, 3, 5] += 1e-3
    text = findings_text(harness.compare(cand, ref, x, weights=weights).diagnosis)
    assert "p.b1_out_k holds other values than the reference's 1.attn.proj.weight" in text.splitlines()[0], text
