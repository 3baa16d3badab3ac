"""Code of the port's own that no reference module twins: where the error is made.

A module without tensors that computes from the model's inputs (a sine position encoding made from
the padding mask) twins the reference's module handed the same values, even where the two models
call it in another order; a wrong encoding is then blamed on it, not on the root. A module of the
port's own that gathers steps the reference runs in its root (a projection, a mixer with a residual
add, a projection back) is no shape-guessed twin of the last step: the add it loses is blamed on it.
A branch adding its position table shifted by a row, and an embedding resizing its image otherwise
where the original resizes before its embedding, are named, not their container."""

from __future__ import annotations

import torch

import harness
from helpers import transferred
from port_toys import (OneExchange, ResizedInEmbedding, ResizedInRoot, SineAfterProjection, SineBeforeProjection,
                       SpreadExchange, TableInBranch, TableInRoot, feature_maps, images, randomized, tokens)


def _compared(candidate, reference, inputs, change=lambda model: None):
    candidate, reference, weights = transferred(randomized(candidate, 1), randomized(reference, 2), inputs)
    with torch.no_grad():
        change(candidate)
    return harness.compare(candidate, reference, inputs, weights=weights)


def _maps_and_mask():
    return feature_maps(), torch.ones(2, 6, 6, dtype=torch.bool)


def test_an_encoding_without_tensors_twins_the_one_handed_the_same_mask():
    report = _compared(SineBeforeProjection(), SineAfterProjection(), _maps_and_mask())
    twins = {row.candidate: row.reference for row in report.rows}
    assert report.passed and twins.get("pos") == "code", report.format(table=True)


def test_an_encoding_left_unnormalized_is_blamed_on_its_module():
    report = _compared(SineBeforeProjection(), SineAfterProjection(), _maps_and_mask(),
                       lambda model: setattr(model.pos, "normalize", False))
    assert (report.passed, report.culprit) == (False, "pos"), report.format(table=True)


def test_a_module_gathering_the_roots_steps_passes():
    report = _compared(OneExchange(), SpreadExchange(), tokens())
    assert report.passed, report.format(table=True)


def test_a_module_gathering_the_roots_steps_that_drops_the_add_is_blamed():
    report = _compared(OneExchange(), SpreadExchange(), tokens(),
                       lambda model: setattr(model.exchange, "residual", False))
    assert (report.passed, report.culprit) == (False, "exchange"), report.format(table=True)


def test_a_branch_adding_its_table_shifted_is_blamed():
    report = _compared(TableInBranch(), TableInRoot(), tokens(), lambda model: setattr(model.branch, "shift", True))
    assert (report.passed, report.culprit) == (False, "branch"), report.format(table=True)


def test_an_embedding_resizing_otherwise_is_blamed():
    report = _compared(ResizedInEmbedding(), ResizedInRoot(), images(),
                       lambda model: setattr(model.embed, "mode", "bilinear"))
    assert (report.passed, report.culprit) == (False, "embed"), report.format(table=True)

