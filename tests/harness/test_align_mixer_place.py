"""A module without tensors and with code of its own, paired by the place it stands at: a port's
pooling mixer (tokens back to the map, pooled, the input subtracted) has no tensors to twin it by,
and its output without the subtraction equals what the reference's inner ``nn.AvgPool2d`` returns.
It stands where the reference's ``token_mixer`` stands (inside the block's twin, handed what the
twin of the norm before it returns), so it twins the mixer, not the pool inside it, and a mixer
that stops short is blamed. A port whose block subtracts the input itself, after a mixer that only
pools, agrees and passes."""

from __future__ import annotations

import harness
from helpers import transferred
from port_toys import PoolingNet, TokenPoolNet, feature_maps, randomized


def _compared(candidate):
    candidate, reference, weights = transferred(randomized(candidate, 1), randomized(PoolingNet(), 2), feature_maps())
    return harness.compare(candidate, reference, feature_maps(), weights=weights)


def test_a_mixer_without_tensors_twins_the_reference_mixer_at_its_place():
    report = _compared(TokenPoolNet())
    twins = {row.candidate: (row.reference, row.match.how) for row in report.rows}
    assert report.passed and twins.get("block.mix") == ("block.token_mixer", "place"), report.format(table=True)


def test_a_mixer_that_leaves_out_its_subtraction_is_blamed():
    report = _compared(TokenPoolNet(subtract=False))
    assert (report.passed, report.culprit) == (False, "block.mix"), report.format()


def test_a_mixer_whose_caller_subtracts_the_input_passes():
    report = _compared(TokenPoolNet(caller_subtracts=True))
    assert report.passed, report.format(table=True)
