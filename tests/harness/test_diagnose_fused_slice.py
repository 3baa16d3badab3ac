"""Split q/k/v projections against a fused qkv: a projection twinned to a slice of the fused output
has no module of its own on the reference side, so it is explained through the attention around it,
and the finding names the member and the rows of the fused weight it should hold."""

import torch
from torch import nn
from torch.nn import functional as F

import harness


class FusedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(8, 24), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class SplitAttention(nn.Module):
    """``exchanged``: queries made by ``k_proj`` and keys by ``q_proj`` (each weight right, used in the
    other's place)."""

    def __init__(self, exchanged: bool = False) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(8, 8) for _ in range(4))
        self.exchanged = exchanged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        heads = (lambda t: t.reshape(b, n, 2, 4).transpose(1, 2))
        q_proj, k_proj = (self.k_proj, self.q_proj) if self.exchanged else (self.q_proj, self.k_proj)
        out = F.scaled_dot_product_attention(heads(q_proj(x)), heads(k_proj(x)), heads(self.v_proj(x)))
        return self.o_proj(out.transpose(1, 2).reshape(b, n, c))


def _diagnosis(change) -> list[str]:
    """The split port against the fused reference, weights mapped and carried over, then ``change``d."""
    torch.manual_seed(0)
    reference = nn.Sequential(FusedAttention(), nn.Linear(8, 8)).double().eval()
    candidate = nn.Sequential(SplitAttention(), nn.Linear(8, 8)).double().eval()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    with torch.no_grad():
        change(candidate[0])
    return [f["text"] for f in harness.compare(candidate, reference, x, weights=weights).diagnosis]


def test_a_changed_split_projection_weight_is_named_against_its_rows_of_the_fused_weight():
    texts = _diagnosis(lambda attention: attention.v_proj.weight[3, 4].add_(1e-3))
    assert texts == ["0.v_proj: linear operand v_proj.weight holds other values than the reference's "
                     "qkv.weight[16:24]"], texts


def test_split_projections_used_in_each_others_place_are_named_where_they_are_used():
    # each projection holds its own rows (as the map put them), joined in the order of those rows:
    # the fused op agrees, and the attention receiving the key projection's output as its query is
    # where the port went wrong
    texts = _diagnosis(lambda attention: setattr(attention, "exchanged", True))
    assert texts[0] == ("0: scaled_dot_product_attention operand query holds the reference's key "
                        "(operands passed in another order?)"), texts
