"""Separate q/k/v projections against one fused qkv projection: a bias one member lacks, or has where
the reference's fused bias holds zeros for it (Swin V2's key), is named on that member, not on the
first member of the fused group."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import findings_text

D, HEADS = 16, 2


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, n, _ = q.shape
    q, k, v = (t.reshape(b, n, HEADS, D // HEADS).transpose(1, 2) for t in (q, k, v))
    # cosine attention (Swin V2's): a key bias changes the scores, which plain attention's softmax cancels
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, D)


class _Split(nn.Module):
    def __init__(self, key_bias: bool = True) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(D, D), nn.Linear(D, D, bias=key_bias), nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _attend(self.q_proj(x), self.k_proj(x), self.v_proj(x))


class _Fused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _attend(*self.qkv(x).chunk(3, -1))


class _FusedZeroKey(nn.Module):
    """A fused projection whose bias is built from a query and a value bias around zeros for the key."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(D)), nn.Parameter(torch.randn(D))
        self.register_buffer("k_bias", torch.zeros(D), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        return _attend(*F.linear(x, self.qkv.weight, bias).chunk(3, -1))


def _diagnosis(candidate: nn.Module, reference: nn.Module, change) -> tuple[str, str]:
    torch.manual_seed(0)
    x = torch.randn(2, 5, D, dtype=torch.float64)
    candidate, reference = candidate.double().eval(), reference.double().eval()
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    change(candidate)
    report = harness.compare(candidate, reference, x, weights=weights)
    return (report.diagnosis[0]["text"] if report.diagnosis else ""), findings_text(report.diagnosis)


def test_a_value_projection_without_its_bias_is_named_on_the_value_projection():
    why, all_ = _diagnosis(_Split(), _Fused(), lambda m: setattr(m.v_proj, "bias", None))
    assert why.startswith("v_proj: linear bias missing in the candidate; the reference passes qkv.bias[32:48]"), all_


def test_a_key_bias_the_reference_holds_as_zeros_is_named_on_the_key_projection():
    def add_key_bias(m):
        key = nn.Linear(D, D).double()
        with torch.no_grad():
            key.weight.copy_(m.k_proj.weight)
        m.k_proj = key
    why, all_ = _diagnosis(_Split(key_bias=False), _FusedZeroKey(), add_key_bias)
    assert why.startswith("k_proj: linear bias k_proj.bias in the candidate, where the reference passes zeros (k_bias)"), \
        all_
