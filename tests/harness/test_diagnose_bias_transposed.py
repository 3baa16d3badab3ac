"""An attention bias laid out otherwise than the reference's (a relative position bias returned
with queries and keys exchanged) is named as its table passed in another layout, against the
reference's attention, also where the port resizes the bias table first (an ``interpolate`` to
the size it has, which changes nothing, pairs with nothing and leaves the table itself)."""

import torch
from torch import nn
from torch.nn import functional as F

import harness


class ReferenceAttention(nn.Module):
    """Attention reading its bias table itself."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(8, 24), nn.Linear(8, 8)
        self.bias_table = nn.Parameter(torch.randn(2, 5, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias_table.unsqueeze(0))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class PositionBias(nn.Module):
    """The bias table resized to the token grid (here the size it has); ``transposed``: returned
    with queries and keys exchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.bias_table = nn.Parameter(torch.randn(2, 5, 5))
        self.transposed = False

    def forward(self) -> torch.Tensor:
        bias = F.interpolate(self.bias_table.unsqueeze(0), size=(5, 5), mode="bilinear")
        return bias.transpose(-1, -2) if self.transposed else bias


class CandidateAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj, self.position_bias = nn.Linear(8, 24), nn.Linear(8, 8), PositionBias()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.position_bias())
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def _first_why(change) -> str:
    """The port against the reference, weights mapped and carried over, then ``change``d."""
    torch.manual_seed(0)
    reference = nn.Sequential(ReferenceAttention(), nn.Linear(8, 8)).double().eval()
    candidate = nn.Sequential(CandidateAttention(), nn.Linear(8, 8)).double().eval()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    assert harness.compare(candidate, reference, x, weights=weights).passed, "the port does not start out right"
    with torch.no_grad():
        change(candidate[0].position_bias)
    diagnosis = harness.compare(candidate, reference, x, weights=weights).diagnosis
    return diagnosis[0]["text"] if diagnosis else "(no diagnosis)"


def test_a_position_bias_returned_transposed_is_named_as_the_attention_mask_permuted():
    why = _first_why(lambda bias: setattr(bias, "transposed", True))
    assert why == ("0: scaled_dot_product_attention operand position_bias.bias_table is stored right (as the "
                   "weight map puts it) but passed in another layout than the reference's bias_table (max_abs "
                   "difference 2.450e+00 in what scaled_dot_product_attention receives)"), why


def test_a_position_bias_table_with_other_values_is_not_named_permuted():
    why = _first_why(lambda bias: bias.bias_table[0, 1, 2].add_(0.5))
    assert "permuted" not in why and "other values" in why, why
