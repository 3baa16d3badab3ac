"""A candidate passing one tensor several times (``mha(x, x, x)``, self-attention through
``nn.MultiheadAttention``) where its twin takes it once: the re-run gives the candidate the
reference's tensor in each place, as one object. Its own recorded input, which at float32 carries
the rounding of what came before, would make its first op differ from its twin's at float64."""

from types import SimpleNamespace

import torch

from harness.diagnose import _given_reference_tensors


def _own_and_reference() -> tuple[tuple[tuple, dict], SimpleNamespace]:
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference_input = x + 1e-7 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    return ((x, x, x), {"need_weights": False}), SimpleNamespace(args=(reference_input,), kwargs={})


def test_tensor_passed_three_times_takes_the_reference_tensor() -> None:
    own, reference = _own_and_reference()
    args, kwargs = _given_reference_tensors(own, reference)
    assert all(torch.equal(a, reference.args[0]) for a in args) and kwargs == {"need_weights": False}, \
        "expected the reference's tensor as query, key and value, and the candidate's own flags; got the " \
        f"candidate's own tensors: {[torch.equal(a, own[0][0]) for a in args]}"


def test_tensor_passed_three_times_stays_one_object() -> None:
    own, reference = _own_and_reference()
    args, _ = _given_reference_tensors(own, reference)
    assert args[0] is args[1] is args[2], "expected query, key and value to be one tensor (the self-attention path)"
