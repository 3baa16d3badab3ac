"""candidates.recognize: the families are asked in a fixed order, the first answer wins, the rest is unknown."""

from __future__ import annotations

import importlib

import pytest
import torch

from candidates.io import load_state_dict
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


# ------------------------------------------------------------------ recognition from headers, without torch
def _convnext():
    from candidates.convnext import ConvNeXt, ConvNeXtConfig

    return ConvNeXt(ConvNeXtConfig(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), num_classes=3)).state_dict()


def _rope_vit():
    from candidates.rope_vit import rope_mixed_vit

    return rope_mixed_vit("small", embed_dim=64, num_heads=2, depth=2, num_classes=4).state_dict()


def _mformer():
    from candidates.mformer import build_mformer

    vit = _rope_vit()
    from candidates.convnext import ConvNeXt, ConvNeXtConfig

    convnext = ConvNeXt(ConvNeXtConfig(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), num_classes=3)).state_dict()
    return build_mformer(convnext, vit)[0].state_dict()


def _vlm(write):
    from candidates.vlm import dinov3_tiny

    return write(dinov3_tiny().state_dict())


def _videomt(dinov3, **options):
    from candidates.videomt import VidEoMT, videomt_dinov3_tiny_config, videomt_tiny_config
    from candidates.videomt.convert import to_upstream, to_upstream_dinov3
    from harness import randomize_

    model = VidEoMT(videomt_dinov3_tiny_config(masked_attention=False) if dinov3 else videomt_tiny_config())
    randomize_(model, torch.Generator().manual_seed(0))  # nonzero biases, so that the fused q/k/v bias segments are read for their values
    state = model.state_dict()
    return to_upstream_dinov3(state, **options) if dinov3 else to_upstream(state)


def _resampler(prefix=""):
    from candidates.resampler import bimamba_resampler

    state = bimamba_resampler(vision_dim=12, hidden_dim=16, out_dim=8, depth=2, d_state=4).state_dict()
    return {prefix + k: v for k, v in state.items()}


def _layouts():
    from candidates.convnext import convnext_to_original
    from candidates.rope_vit import rope_vit_to_original
    from candidates.vlm import to_timm_state_dict, to_transformers_state_dict

    return {
        "convnext timm": _convnext,
        "convnext original": lambda: convnext_to_original(_convnext()),
        "rope_vit timm": _rope_vit,
        "rope_vit original": lambda: rope_vit_to_original(_rope_vit()),
        "mformer": _mformer,
        "vlm transformers": lambda: _vlm(to_transformers_state_dict),
        "vlm timm": lambda: _vlm(to_timm_state_dict),
        "videomt dinov2": lambda: _videomt(False),
        "videomt dinov3": lambda: _videomt(True),
        "videomt dinov3 fused qkv": lambda: _videomt(True, fused_qkv=True),
        "resampler bare": _resampler,
        "resampler prefixed": lambda: _resampler("model.resampler."),
        "unknown": lambda: {"fc.weight": torch.zeros(2, 3), "steps": torch.tensor([3])},
    }


LAYOUTS = list(_layouts())


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_checkpoint_read_as_headers_is_recognized_as_its_loaded_tensors_are(tmp_path, layout, suffix):
    from candidates.io import save_state_dict
    from harness.headers import read_headers

    path = save_state_dict(_layouts()[layout](), tmp_path / f"ckpt{suffix}")
    headers = read_headers(path)
    assert headers is not None, f"{path.name} ({layout}) was left to torch"
    from_tensors = inspect_state_dict(load_state_dict(path), path=str(path))
    assert inspect_state_dict(headers, path=str(path)) == from_tensors
    assert inspect_checkpoint(path) == from_tensors


def test_inspect_recognizes_every_layout_without_importing_torch(tmp_path):
    from candidates.io import save_state_dict
    from helpers import cli_in_fresh_process

    paths = [save_state_dict(build(), tmp_path / f"{i}.pth") for i, build in enumerate(_layouts().values())]
    codes, torch_modules = cli_in_fresh_process(*(["inspect", path, "--json"] for path in paths))
    assert (codes, torch_modules) == ([0] * len(paths), []), (
        f"inspect of {dict(zip(LAYOUTS, codes))} imported {torch_modules}; "
        f"`python -X importtime -m harness inspect {paths[0]} 2>&1 | grep -B5 torch` shows which import pulls it")


def test_a_recognizer_that_needs_unreadable_values_falls_back_to_torch(tmp_path, monkeypatch):
    from candidates.io import save_state_dict

    path = tmp_path / "fused.pth"
    save_state_dict(_videomt(True, fused_qkv=True), path)
    expected = inspect_checkpoint(path)
    monkeypatch.setattr("harness.headers.TensorHeader.tolist", _unreadable)
    assert inspect_checkpoint(path) == expected


def _unreadable(self):
    from harness.headers import ValuesUnavailable

    raise ValuesUnavailable("values withheld to test the fallback")


def test_inspect_refuses_a_pickle_that_runs_code_without_running_it(tmp_path):
    from candidates.io import UnsafePickleError
    from helpers import write_malicious_checkpoint

    marker = tmp_path / "pwned"
    path = write_malicious_checkpoint(tmp_path / "evil.pth", _convnext(), marker)
    with pytest.raises(UnsafePickleError, match="evil.pth"):
        inspect_checkpoint(path)
    assert not marker.exists(), "inspecting the checkpoint ran code from its pickle"


def test_a_checkpoint_the_header_reader_leaves_to_torch_is_recognized_all_the_same(tmp_path):
    from harness.headers import read_headers

    path = tmp_path / "legacy.pth"
    torch.save({"model": _convnext()}, path, _use_new_zipfile_serialization=False)
    assert read_headers(path) is None, "the legacy format should be read by torch"
    info = inspect_checkpoint(path)
    assert (info.family, info.layout, info.dims["depths"]) == ("convnext", "timm", [1, 1, 2, 1])
