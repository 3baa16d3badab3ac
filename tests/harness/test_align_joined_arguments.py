"""A module called with several tensors that its twin takes as one: a port's gMLP gate given
``u`` and ``v`` (projected apart, a GELU on each) against timm's gating unit given both halves in
one tensor, which it chunks; a port's merge given the branches joined against timm's DLA root
given them in a list. Joined in the order given, the arguments are the twin's input: the module is
compared on them and re-run on its twin's, so an error in its own code is blamed on it. Arguments
that join to another order (halves exchanged upstream) are other inputs."""

from __future__ import annotations

import torch

import harness
from helpers import transferred
from port_toys import AggregationNet, ChunkedGMlp, HalvesGMlp, TreeNet, feature_maps, randomized, tokens


def _compared(candidate, reference, change=lambda model: None):
    candidate, reference, weights = transferred(randomized(candidate, 1), randomized(reference, 2), tokens())
    with torch.no_grad():
        change(candidate)
    return harness.compare(candidate, reference, tokens(), weights=weights)


def test_a_gate_given_its_halves_apart_is_blamed_for_its_own_eps():
    report = _compared(HalvesGMlp(eps=1e-6), ChunkedGMlp())
    assert (report.passed, report.culprit) == (False, "gate"), report.format()


def test_a_gate_given_its_halves_apart_is_compared_on_the_halves_joined():
    report = _compared(HalvesGMlp(eps=1e-6), ChunkedGMlp())
    row = next(row for row in report.rows if row.candidate == "gate")
    joined, twin = row.match.candidate.inputs["args.0"], row.match.reference.inputs["args.0"]
    # the halves come from two projections where the reference runs one: equal up to BLAS rounding
    assert row.status == "introduced" and torch.allclose(joined, twin, rtol=0, atol=1e-14), (
        f"gate's input {tuple(joined.shape)} against its twin's {tuple(twin.shape)}\n{report.format(table=True)}")


def _exchanged(model: HalvesGMlp) -> None:
    """``to_u`` and ``to_v`` given each other's weights (a conversion that mixed them up)."""
    u = [t.clone() for t in (model.to_u.weight, model.to_u.bias)]
    model.to_u.weight.copy_(model.to_v.weight), model.to_u.bias.copy_(model.to_v.bias)
    model.to_v.weight.copy_(u[0]), model.to_v.bias.copy_(u[1])


def test_a_gate_handed_halves_exchanged_upstream_is_no_origin():
    report = _compared(HalvesGMlp(), ChunkedGMlp(), _exchanged)
    assert not report.passed and "gate" not in report.introduced, report.format()


def test_a_gate_taking_one_tensor_makes_the_error_that_its_twin_given_the_halves_apart_does_not():
    report = _compared(ChunkedGMlp(), HalvesGMlp(), lambda model: setattr(model.gate, "swapped", True))
    row = next(row for row in report.rows if row.candidate == "gate")
    assert row.status in ("introduced", "contains"), report.format(table=True)


def _columns_rolled(model: TreeNet) -> None:
    """The merge conv's input channels rolled by half (a conversion that joined the branches the other way)."""
    weight = model.tree.node.merge[0].weight
    weight.copy_(weight.roll(8, dims=1))


def test_a_merge_twinned_with_one_given_the_branches_in_a_list_is_compared_on_them_joined():
    candidate, reference, weights = transferred(randomized(TreeNet(), 1), randomized(AggregationNet(), 2), feature_maps())
    with torch.no_grad():
        _columns_rolled(candidate)
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    row = next(row for row in report.rows if row.candidate == "tree.node.merge")
    assert (row.reference, row.status) == ("level.root", "contains"), report.format(table=True)
