"""Every registered pair's hand-written conversion is the table map_weights infers.

The families' ``convert`` functions were written by hand from the upstream layouts; the inferred
map must give bitwise the same candidate tensors for every key it maps, and list the rest with a
reason. A pair whose conversion and inferred map disagree has a bug in one of them.
"""

from __future__ import annotations

import pytest
import torch

import harness

PAIRS = {
    "convnext_tiny_stage3_block": set(),
    "dinov3_projector": set(),
    "dinov3_vit": set(),  # fused qkv with separate q/v biases against split projections without a key bias
    "dinov3_vit_timm": set(),
    "eomt_dinov3": {"query_updater.weight", "query_updater.bias"},  # propagates queries between frames: one frame here
    "mamba_mixer": set(),
    "mformer_v1_sm_tiny": set(),
    "rope_mixed_vit_small_d2": set(),
    "videomt": set(),
}


@pytest.fixture(scope="module", params=sorted(PAIRS))
def mapped(request):
    pair = harness.get_pair(request.param)
    candidate, reference = pair.build(dtype=torch.float64)
    options = pair.compare_options()
    weights = harness.map_weights(candidate, reference, pair.inputs(dtype=torch.float64), verify=False,
                                  candidate_call=options["candidate_call"], reference_call=options["reference_call"])
    state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    return request.param, weights, pair.convert(state), weights.to_candidate(state)


def test_inferred_entries_equal_the_hand_written_conversion(mapped):
    name, weights, converted, inferred = mapped
    differ = [k for k, v in inferred.items() if not torch.equal(v, converted[k].to(v.dtype))]
    assert not differ, f"{name}: inferred map and convert() disagree on {differ[:5]}\n{weights}"


def test_what_the_map_leaves_out_is_listed_with_a_reason(mapped):
    name, weights, converted, inferred = mapped
    left_out = {k for k in converted if k not in inferred}
    assert left_out == PAIRS[name], f"{name}: not mapped {sorted(left_out)}\n{weights}"
    assert all(k in weights.reasons for k in left_out), f"{name}: no reason given\n{weights}"
