"""candidates.mformer.convert: the two source tables read both ways, unused keys reported, recognition."""

from __future__ import annotations

import pytest
import torch

from candidates.convnext import ConvNeXt, ConvNeXtConfig
from candidates.mformer.convert import (
    CONVNEXT_PART, ROPE_VIT_PART, convert_timm_state_dict, recognize, split_convnext_state_dict,
    split_rope_vit_state_dict,
)
from candidates.mformer import build_mformer
from candidates.rope_vit import rope_mixed_vit

DIMS = (16, 32, 64, 128)


@pytest.fixture(scope="module")
def sources():
    torch.manual_seed(0)
    convnext = ConvNeXt(ConvNeXtConfig(depths=(1, 1, 1, 1), dims=DIMS, num_classes=3)).state_dict()
    vit = rope_mixed_vit("small", embed_dim=64, num_heads=2, depth=1, num_classes=4).state_dict()
    model, _ = build_mformer(convnext, vit)
    return convnext, vit, model.state_dict()


@pytest.mark.parametrize(("table", "source"), [(CONVNEXT_PART, 0), (ROPE_VIT_PART, 1)], ids=["convnext", "rope_vit"])
def test_a_source_round_trips_through_its_table(sources, table, source):
    state = sources[source]
    forward = table.map(state, to="candidate")
    back = table.to_reference(forward.state)
    assert set(back) == set(state) - set(forward.ignored), "source -> mFormerV1 -> source lost or invented keys"
    assert all(torch.equal(back[k], state[k]) for k in back), "source -> mFormerV1 -> source changed a tensor"


def test_the_model_read_backward_gives_each_sources_part(sources):
    convnext, vit, model = sources
    trunk = CONVNEXT_PART.map(model, to="reference", strict=False)
    blocks = ROPE_VIT_PART.map(model, to="reference", strict=False)
    assert len(trunk.state) + len(blocks.state) == len(model), "a model key belongs to neither source"
    assert sorted(trunk.unmatched) == sorted(blocks.state)  # the ViT part keeps its names
    assert "stages.2.downsample.1.weight" in trunk.state and "downsample.1.weight" not in trunk.state
    assert all(torch.equal(trunk.state[k], convnext[k]) for k in trunk.state)
    assert all(torch.equal(blocks.state[k], vit[k]) for k in blocks.state)


def test_unused_source_keys_are_reported_by_name(sources):
    convnext, vit, _ = sources
    _, unused = split_convnext_state_dict(dict(convnext, extra=torch.zeros(1)))
    assert {"stages.2.blocks.0.gamma", "stages.3.downsample.1.weight", "head.fc.weight", "extra"} <= set(unused)
    assert not any(k.startswith(("stem.", "stages.0.", "stages.1.", "stages.2.downsample.")) for k in unused)
    _, unused = split_rope_vit_state_dict(vit)
    assert sorted(unused) == ["patch_embed.proj.bias", "patch_embed.proj.weight"]


def test_reference_transfer_is_the_identity(sources):
    model = sources[2]
    converted = convert_timm_state_dict(model)
    assert converted is not model and converted.keys() == model.keys()


def test_recognize_claims_an_mformer_and_nothing_else(sources):
    convnext, vit, model = sources
    info = recognize(model)
    assert (info.family, info.layout, info.num_heads_source) == ("mformer_v1", "timm", "derived")
    assert info.dims == {"convnext_depths": [1, 1], "convnext_dims": [16, 32, 64], "embed_dim": 64, "depth": 1,
                         "num_heads": 2}
    assert recognize(convnext) is None and recognize(vit) is None
