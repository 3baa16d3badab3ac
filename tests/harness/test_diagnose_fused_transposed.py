"""A split projection whose square weight holds its rows of the reference's fused weight stored
transposed is named as permuted against those rows, as an unfused weight stored transposed is."""

import torch
from torch import nn

import harness
from port_toys import SdpaFused, SdpaSplit


def _first_why(change) -> str:
    """The split port against the fused reference, weights mapped and carried over, then ``change``d."""
    torch.manual_seed(0)
    reference = nn.Sequential(SdpaFused(), nn.Linear(8, 8)).double().eval()
    candidate = nn.Sequential(SdpaSplit(), nn.Linear(8, 8)).double().eval()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    with torch.no_grad():
        change(candidate[0])
    diagnosis = harness.compare(candidate, reference, x, weights=weights).diagnosis
    return diagnosis[0]["text"] if diagnosis else "(no diagnosis)"


def _transpose(weight: torch.Tensor) -> None:
    weight.copy_(weight.t().clone())


def test_a_split_projection_weight_stored_transposed_is_named_permuted_against_its_fused_rows():
    why = _first_why(lambda attention: _transpose(attention.q_proj.weight))
    assert why == ("0.q_proj: linear operand q_proj.weight holds the reference's qkv.weight[0:8] with its dims "
                   "permuted (1, 0) (stored transposed?)"), why


def test_a_split_projection_weight_scaled_is_not_named_permuted():
    why = _first_why(lambda attention: attention.k_proj.weight.mul_(1.5))
    assert why == "0.k_proj: linear operand k_proj.weight holds other values than the reference's qkv.weight[8:16]", why
