"""Split q/k/v projections against a fused qkv: a projection twinned to a slice of the fused output
has no module of its own on the reference side, so it is explained through the attention around it,
and the finding names the member and the rows of the fused weight it should hold."""

import torch
from torch import nn

import harness
from port_toys import SdpaFused, SdpaSplit


def _diagnosis(change) -> list[str]:
    """The split port against the fused reference, weights mapped and carried over, then ``change``d."""
    torch.manual_seed(0)
    reference = nn.Sequential(SdpaFused(), nn.Linear(8, 8)).double().eval()
    candidate = nn.Sequential(SdpaSplit(), nn.Linear(8, 8)).double().eval()
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
