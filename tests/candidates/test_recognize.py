"""candidates.recognize: the families are asked in a fixed order, the first answer wins, the rest is unknown."""

from __future__ import annotations

import importlib

import pytest
import torch

from candidates.recognize import FAMILIES, CheckpointInfo, inspect_checkpoint, inspect_state_dict

CONVNEXT = {"stem.0.weight": torch.ones(8, 3, 4, 4), "stages.0.blocks.0.gamma": torch.ones(8)}
ROPE_VIT = {"cls_token": torch.ones(1, 1, 8), "rope.freqs": torch.ones(2, 1, 2, 1), "blocks.0.norm1.weight": torch.ones(8)}


def test_every_family_is_asked_and_mformer_before_the_families_it_contains():
    assert sorted(FAMILIES) == ["convnext", "mformer", "resampler", "rope_vit", "videomt", "vlm"]
    assert FAMILIES.index("mformer") < min(FAMILIES.index("convnext"), FAMILIES.index("rope_vit"))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_recognizes_in_its_convert_module(family):
    recognize = importlib.import_module(f"candidates.{family}.convert").recognize
    assert recognize({"fc.weight": torch.zeros(2, 3)}) is None, f"{family} claims a state dict of one Linear"


def test_the_first_family_to_answer_wins():
    mformer = dict(CONVNEXT, **ROPE_VIT, **{"downsample.1.weight": torch.ones(8, 8, 2, 2),
                                            "stages.1.downsample.1.weight": torch.ones(8, 8, 2, 2)})
    assert inspect_state_dict(mformer).family == "mformer_v1"
    assert inspect_state_dict(CONVNEXT).family == "convnext"
    assert inspect_state_dict(ROPE_VIT).family == "rope_mixed_vit"


def test_a_state_dict_no_family_claims_is_unknown_with_counts():
    info = inspect_state_dict({"fc.weight": torch.zeros(2, 3), "steps": torch.tensor([3])}, path="x.pt")
    assert (info.family, info.layout, info.num_params, info.num_tensors, info.path) == ("unknown", None, 6, 2, "x.pt")
    assert info.notes == [f"not a state dict of a known family ({', '.join(FAMILIES)}); only counts are reported"]


def test_a_head_count_for_a_family_without_heads_is_refused():
    with pytest.raises(ValueError, match=r"num_heads applies to checkpoints with attention heads; this state dict "
                                         r"is a convnext checkpoint, which has none: leave --num-heads out"):
        inspect_state_dict(CONVNEXT, num_heads=2)


def test_a_head_count_for_an_unknown_state_dict_is_refused():
    with pytest.raises(ValueError, match=r"this state dict is not a checkpoint of a known family: leave --num-heads"):
        inspect_state_dict({"fc.weight": torch.zeros(2, 3)}, num_heads=2)


def test_the_path_is_set_on_the_answer(tmp_path):
    from candidates.io import save_state_dict

    path = save_state_dict(CONVNEXT, tmp_path / "c.safetensors")
    assert inspect_checkpoint(path).path == str(path)


@pytest.mark.parametrize("state, problem", [
    ({"cls_token": torch.ones(1, 1, 8), "rope.freqs": torch.ones(2, 3)}, "rope.freqs must be"),
    ({"cls_token": torch.ones(()), "freqs": torch.ones(2, 1, 8)}, "IndexError"),
], ids=["misshapen-rope-freqs", "zero-dim-cls-token"])
def test_inspect_names_the_file_of_a_malformed_checkpoint(tmp_path, state, problem):
    from candidates.io import save_state_dict

    path = save_state_dict(state, tmp_path / "odd.safetensors")
    with pytest.raises(ValueError) as caught:
        inspect_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: ") and problem in str(caught.value), caught.value


def test_text_and_json_forms_carry_the_same_fields():
    info = CheckpointInfo("rope_mixed_vit", "original", 1234, 5, variant=None, dims={"embed_dim": 8, "num_heads": 2},
                          notes=["n"], path="p.pth", num_heads_source="given")
    assert list(info.to_dict()) == ["family", "layout", "num_params", "num_tensors", "variant", "dims", "notes",
                                    "path", "num_heads_source"]
    assert info.format().splitlines() == [
        "checkpoint: p.pth", "family:     rope_mixed_vit (original layout)", "embed_dim:  8",
        "num_heads:  2 (given)", "parameters: 1,234 in 5 tensors", "note:       n",
    ]
