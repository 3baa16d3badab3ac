"""A position table added to the patches alone before the class token joins them (timm's
``no_embed_class``) against one added whole to the class token and the patches (transformers'
DINOv2): the port's table is the reference's last rows; the reference's class row is added to a
token the port adds nothing to, so the two agree only where that row is zero."""

from __future__ import annotations

import pytest
import torch

import harness
from helpers import transferred
from test_weights_padded_table import N, PatchesOnly, WholeTable

CLASS_ROW_CUT = {"op": "slice", "dim": 1, "start": 1, "stop": 1 + N, "rest": 0.0}


def pair(class_row_zero: bool):
    torch.manual_seed(0)
    x = torch.randn(2, N, 8, dtype=torch.float64)
    port, original = PatchesOnly().double().eval(), WholeTable().double().eval()
    if class_row_zero:
        with torch.no_grad():
            original.position[:, 0] = 0.0
    return (*transferred(port, original, x), x)


@pytest.fixture
def zero_class_row():
    return pair(class_row_zero=True)


def test_a_patch_table_takes_the_whole_tables_rows_after_the_class_row(zero_class_row):
    port, original, weights, x = zero_class_row
    entry = next((e for e in weights.entries if e.candidate == "pos_embed"), None)
    assert entry is not None and (entry.reference, entry.steps) == (("position",), (CLASS_ROW_CUT,)), str(weights)


def test_a_patch_table_against_a_zero_class_row_is_verified_and_the_port_passes(zero_class_row):
    port, original, weights, x = zero_class_row
    report = harness.compare(port, original, x, weights=weights)
    assert (weights.verified, weights.coverage, report.passed) == (True, 1.0, True), f"{weights}\n{report.format()}"


def test_a_class_row_the_port_never_adds_is_named_in_the_map():
    port, original, weights, x = pair(class_row_zero=False)
    assert any("pos_embed takes 1:7 along dim 1 of position" in n and "0:1 along dim 1" in n for n in weights.notes), \
        str(weights)


def test_a_class_row_the_port_never_adds_fails_verification():
    port, original, weights, x = pair(class_row_zero=False)
    assert (weights.verified, weights.coverage) == (False, 1.0), str(weights)


def test_read_back_the_patch_table_is_the_whole_table_with_a_zero_class_row(zero_class_row):
    port, original, weights, x = zero_class_row
    back = weights.to_reference(port.state_dict())["position"]
    assert torch.equal(back, original.position.detach()), "the whole table did not come back with a zero class row"
