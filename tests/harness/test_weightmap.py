"""harness.weightmap: a weight map's entries read a reference state dict into the candidate's and back."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same_state, random_state
from port_toys import FusedBlock, SplitBlock, randomized, tokens

import harness
from harness.weightmap import Entry, ModelsSwapped, WeightMap

TRANSPOSE = {"op": "transpose", "dims": [0, 1]}


def test_weight_map_slices_join_back_into_the_fused_reference_tensor():
    entries = [Entry(candidate=f"{n}.weight", reference=("qkv.weight",), reference_shapes=((9, 4),),
                     steps=({"op": "slice", "dim": 0, "start": 3 * i, "stop": 3 * i + 3}, TRANSPOSE), shape=(4, 3))
               for i, n in enumerate("qkv")]
    weights = WeightMap(entries=entries, unmatched={"candidate": [], "reference": []})
    state = random_state(qkv__weight=(9, 4))
    assert_same_state(weights.to_reference(weights.to_candidate(state)), state)


def test_weight_map_slices_that_leave_rows_uncovered_cannot_be_read_backward():
    entries = [Entry(candidate="q.weight", reference=("qkv.weight",), reference_shapes=((9, 4),),
                     steps=({"op": "slice", "dim": 0, "start": 0, "stop": 3},), shape=(3, 4))]
    weights = WeightMap(entries=entries, unmatched={"candidate": [], "reference": []})
    with pytest.raises(ValueError, match=r"cover rows \[\(0, 3\)\] of 'qkv.weight' \(size 9"):
        weights.to_reference({"q.weight": torch.zeros(3, 4)})


def test_weight_map_concatenation_along_dim_one_splits_back_by_the_reference_sizes():
    entries = [Entry(candidate="w", reference=("a", "b"), reference_shapes=((2, 3), (2, 5)),
                     steps=({"op": "concat", "dim": 1, "sizes": [3, 5]},), shape=(2, 8))]
    weights = WeightMap(entries=entries, unmatched={"candidate": [], "reference": []})
    state = random_state(a=(2, 3), b=(2, 5))
    assert_same_state(weights.to_reference(weights.to_candidate(state)), state)


# -- models given the other way round ---------------------------------------------------------------
def _fused_and_split() -> tuple[torch.nn.Module, torch.nn.Module, WeightMap]:
    candidate, reference = FusedBlock().double().eval(), randomized(SplitBlock(), 2)
    return candidate, reference, harness.map_weights(candidate, reference, tokens())


def test_transfer_given_the_candidate_first_says_the_models_look_swapped():
    candidate, reference, weights = _fused_and_split()
    with pytest.raises(ModelsSwapped, match=r"look swapped.*call transfer\(reference, candidate\)"):
        weights.transfer(candidate, reference)


def test_compare_given_the_reference_first_says_the_models_look_swapped():
    candidate, reference, weights = _fused_and_split()
    with pytest.raises(ModelsSwapped, match=r"look swapped.*call compare\(candidate, reference"):
        harness.compare(reference, candidate, tokens(), weights=weights)


def test_a_map_of_other_models_is_not_taken_for_swapped_models():
    _, reference, weights = _fused_and_split()
    other = FusedBlock(dim=8).double()
    with pytest.raises(ValueError, match="it was made for another model") as raised:
        weights.transfer(reference, other)
    assert not isinstance(raised.value, ModelsSwapped), raised.value
