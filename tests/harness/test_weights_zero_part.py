"""Weight maps for a fused tensor one part of which the other model keeps as no tensor at all: a
``qkv`` linear layer with a bias against query, key and value layers where the key layer has no
bias (BEiT), or against a query and a value bias joined with zeros where used (timm's BEiT, EVA,
Swin V2). The map concatenates the stored parts and inserts zeros between them; read backward, it
drops the zeros' rows and says when they are not zero."""

from __future__ import annotations

import json

import pytest
import torch

import harness
from helpers import map_sources, seeded
from qkv_toys import C, FusedBlock, JoinedBlock, SplitBlock, tokens

ZERO_KEY_BIAS = {"op": "insert", "dim": 0, "start": C, "size": C, "value": 0.0}


def concat(*sizes: int) -> dict:
    return {"op": "concat", "dim": 0, "sizes": list(sizes)}


@pytest.fixture(scope="module")
def split_map():
    """The verified map of a fused port against a reference whose key layer has no bias."""
    return harness.map_weights(seeded(FusedBlock(), 1), seeded(SplitBlock(), 2), tokens())


# -- inference ------------------------------------------------------------------------------------------
def test_a_fused_bias_takes_the_query_and_value_biases_with_zeros_where_the_key_layer_has_none(split_map):
    assert map_sources(split_map).get("qkv.bias") == (("query.bias", "value.bias"), (concat(C, C), ZERO_KEY_BIAS)), \
        str(split_map)


def test_a_fused_port_of_a_reference_without_key_bias_is_covered_and_verified(split_map):
    assert (split_map.coverage, split_map.unmatched, split_map.verified) == (
        1.0, {"candidate": [], "reference": []}, True), str(split_map)


def test_a_correct_fused_port_of_a_reference_without_key_bias_passes_through_the_map():
    candidate, reference = seeded(FusedBlock(), 1), seeded(SplitBlock(), 2)
    weights = harness.map_weights(candidate, reference, tokens())
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, tokens(), weights=weights)
    assert (report.passed, bool(candidate.qkv.bias[C:2 * C].any())) == (True, False), report.format()


def test_a_fused_bias_takes_the_biases_a_reference_joins_with_zeros_where_used():
    weights = harness.map_weights(seeded(FusedBlock(), 1), seeded(JoinedBlock(), 2), tokens())
    assert (map_sources(weights).get("qkv.bias"), weights.verified) == (
        (("q_bias", "v_bias"), (concat(C, C), ZERO_KEY_BIAS)), True), str(weights)


def test_biases_joined_with_zeros_alike_on_both_sides_map_part_to_part():
    weights = harness.map_weights(seeded(JoinedBlock(), 1), seeded(JoinedBlock(), 2), tokens())
    found = map_sources(weights)
    assert (found.get("q_bias"), found.get("v_bias"), weights.verified) == (
        (("q_bias",), ()), (("v_bias",), ()), True), str(weights)


def test_a_key_layer_with_a_bias_gives_its_rows_no_zeros():
    weights = harness.map_weights(seeded(FusedBlock(), 1), seeded(SplitBlock(key_bias=True), 2), tokens())
    assert map_sources(weights).get("qkv.bias") == (("query.bias", "key.bias", "value.bias"), (concat(C, C, C),)), \
        str(weights)


def test_a_fused_port_without_bias_takes_no_zeros_and_leaves_the_references_biases_untaken():
    weights = harness.map_weights(seeded(FusedBlock(bias=False), 1), seeded(SplitBlock(), 2), tokens(),
                                  verify=False)
    assert (sorted(weights.untaken()), all(st["op"] != "insert" for e in weights.entries for st in e.steps)) == (
        ["query.bias", "value.bias"], True), str(weights)


def test_a_port_reading_the_zero_rows_as_values_gets_the_map_refused_by_verification():
    weights = harness.map_weights(seeded(FusedBlock(values_second=True), 1), seeded(SplitBlock(), 2),
                                  tokens(), max_alternatives=2)
    assert weights.verified is False and weights.conflicts, str(weights)


# -- reading the map backward ----------------------------------------------------------------------------
def test_read_backward_the_zero_rows_are_dropped_and_the_query_and_value_biases_given_back(split_map):
    reference = seeded(SplitBlock(), 2)
    back = split_map.to_reference(split_map.to_candidate(reference.state_dict()))
    assert sorted(back) == sorted(reference.state_dict()) and all(
        torch.equal(back[k], v) for k, v in reference.state_dict().items()), sorted(back)


def test_read_backward_key_rows_that_are_not_zero_are_refused_naming_the_tensor(split_map):
    state = seeded(FusedBlock(), 3).state_dict()
    with pytest.raises(ValueError, match=r"qkv\.bias differs from the constant rows the map inserts .*strict=False"):
        split_map.to_reference(state)


def test_read_backward_without_strict_key_rows_that_are_not_zero_are_dropped(split_map):
    state = seeded(FusedBlock(), 3).state_dict()
    back = split_map.to_reference(state, strict=False)
    assert torch.equal(back["value.bias"], state["qkv.bias"][2 * C:]), "value.bias is not the value rows"


# -- the file ----------------------------------------------------------------------------------------------
def test_a_saved_map_with_zeros_keeps_the_insert_step_and_transfers_them(split_map, tmp_path):
    path = split_map.save(tmp_path / "map.json")
    saved = next(e for e in json.loads(open(path).read())["entries"] if e["candidate"] == "qkv.bias")
    candidate, reference = seeded(FusedBlock(), 3), seeded(SplitBlock(), 2)
    loaded = harness.load_weight_map(path)
    loaded.transfer(reference, candidate)
    assert (saved["transform"][-1], loaded.verified, bool(candidate.qkv.bias[C:2 * C].any())) == (
        ZERO_KEY_BIAS, True, False), saved


def test_a_map_file_with_an_insert_step_lacking_its_value_is_refused_naming_the_field(split_map):
    data = split_map.to_dict()
    entry = next(e for e in data["entries"] if e["candidate"] == "qkv.bias")
    entry["transform"][-1] = {"op": "insert", "dim": 0, "start": C, "size": C}
    with pytest.raises(ValueError, match=r"entry 'qkv.bias'.*'value' must be a number, got 'nothing'"):
        harness.load_weight_map(data)


def test_a_fused_port_with_a_wrong_value_bias_blames_its_qkv_layer_against_the_split_layers():
    candidate, reference = seeded(FusedBlock(), 1), seeded(SplitBlock(), 2)
    weights = harness.map_weights(candidate, reference, tokens())
    weights.transfer(reference, candidate)
    with torch.no_grad():
        candidate.qkv.bias[2 * C:] += 0.5
    report = harness.compare(candidate, reference, tokens(), weights=weights)
    assert (report.passed, report.culprit) == (False, "qkv"), report.format()


def test_a_fused_layer_whose_bias_has_zeros_for_a_layer_without_one_twins_all_three_split_layers(split_map):
    assert split_map.fused_twins() == [("concat", "qkv", ("query", "key", "value"), None)], split_map.fused_twins()


def test_split_layers_cut_from_one_fused_layer_are_parts_of_it_not_tied_copies():
    weights = harness.map_weights(seeded(SplitBlock(key_bias=True), 1), seeded(FusedBlock(), 2), tokens())
    assert (weights.verified, [n for n in weights.notes if "feeds" in n]) == (True, []), str(weights)


def test_a_split_layer_cut_from_one_fused_layer_is_not_the_fused_layers_twin():
    candidate, reference = seeded(SplitBlock(key_bias=True), 1), seeded(FusedBlock(), 2)
    chains = harness.map_weights(candidate, reference, tokens(), verify=False).twin_chains(candidate, reference)
    assert not any("qkv" in rs for _, rs in chains), chains
