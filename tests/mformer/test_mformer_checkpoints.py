"""Checkpoint inspection, the seed's compatibility table, and mFormerV1 built from two checkpoints.

Test checkpoints are written here from the key names of each layout: timm's, the original
ConvNeXt release's (``downsample_layers.*``, ``stages.i.j.dwconv``...) and the original RoPE-ViT
release's (``freqs``, ``freqs_t_x``, ``freqs_t_y``), the latter two wrapped in ``{"model": ...}``.
Full-size checkpoints would be gigabytes, so files use reduced depths (dims unchanged, which is
all that inspection and compatibility read) and the seed table is built from meta-device state
dicts of the full variants.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch

from candidates.checkpoints import (
    build_mformer, compat_row, convert_original_convnext, convnext_to_original, inspect_state_dict,
    load_state_dict, rope_vit_to_original, save_state_dict,
)
from candidates.convnext import ConvNeXt, ConvNeXtConfig, convnext_large, convnext_small, convnext_tiny, convnext_xlarge
from candidates.rope_vit import rope_mixed_vit
from harness.cli import main as harness_cli
from reference.mformer import TimmMFormerV1
from reference.rope_vit import pin_eager_attention

SEED = [
    ("convnext_tiny_22k_1k_384.pth", convnext_tiny, "rope_mixed_deit_small_patch16_LS.pth", "small"),
    ("convnext_small_22k_1k_384.pth", convnext_small, "rope_mixed_deit_small_patch16_LS.pth", "small"),
    ("convnext_large_22k_1k_384.pth", convnext_large, "rope_mixed_deit_base_patch16_LS.pth", "base"),
    ("convnext_xlarge_22k_1k_384_ema.pth", convnext_xlarge, "rope_mixed_deit_large_patch16_LS.pth", "large"),
]


@pytest.mark.golden
def test_seed_compatibility_table(golden):
    rows = []
    for convnext_file, convnext_factory, vit_file, vit_variant in SEED:
        with torch.device("meta"):
            convnext, vit = convnext_factory(), rope_mixed_vit(vit_variant)
        # the seed's files are the original releases: inspect them in the original layouts
        convnext_info = inspect_state_dict(convnext_to_original(convnext.state_dict()), path=convnext_file)
        vit_info = inspect_state_dict(rope_vit_to_original(vit.state_dict()), path=vit_file)
        assert (convnext_info.layout, vit_info.layout) == ("original", "original")
        row = compat_row(convnext_info, vit_info).to_dict()
        assert row.pop("error") is None
        rows.append(row)
    golden("mformer_compat_table", rows)


def _small_convnext(dims=(96, 192, 384, 768)) -> ConvNeXt:
    torch.manual_seed(1)
    return ConvNeXt(ConvNeXtConfig(depths=(1, 1, 1, 1), dims=dims)).eval()


def _small_vit(variant="small"):
    torch.manual_seed(2)
    model = rope_mixed_vit(variant, depth=1, num_classes=4).eval()
    with torch.no_grad():
        model.rope.freqs.normal_()
        for block in model.blocks:
            block.gamma_1.fill_(0.5)
            block.gamma_2.fill_(0.5)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    convnext, vit_s, vit_b = _small_convnext(), _small_vit("small"), _small_vit("base")
    return {
        "convnext": convnext, "vit_s": vit_s,
        "convnext_timm": save_state_dict(convnext.state_dict(), root / "convnext_t.safetensors"),
        "convnext_orig": save_state_dict(convnext_to_original(convnext.state_dict()), root / "convnext_tiny_22k_1k_384.pth", wrap="model"),
        "vit_s_timm": save_state_dict(vit_s.state_dict(), root / "vit_s.pth"),
        "vit_s_orig": save_state_dict(rope_vit_to_original(vit_s.state_dict()), root / "rope_mixed_deit_small_patch16_LS.pth", wrap="model"),
        "vit_b_orig": save_state_dict(rope_vit_to_original(vit_b.state_dict()), root / "rope_mixed_deit_base_patch16_LS.pth", wrap="model"),
    }


def test_original_convnext_mapping_round_trips(files):
    state = files["convnext"].state_dict()
    original = convnext_to_original(state)
    assert {"downsample_layers.0.0.weight", "downsample_layers.2.1.weight", "stages.1.0.dwconv.weight",
            "stages.1.0.pwconv1.weight", "norm.weight", "head.weight"} <= set(original)
    assert convert_original_convnext(original).keys() == state.keys()


@pytest.mark.parametrize("name", ["convnext_timm", "convnext_orig"])
def test_inspect_convnext(files, name, capsys):
    assert harness_cli(["inspect", str(files[name]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "convnext" and info["layout"] == ("timm" if name.endswith("timm") else "original")
    assert info["dims"] == {"depths": [1, 1, 1, 1], "dims": [96, 192, 384, 768], "num_classes": 1000}
    assert info["num_params"] == sum(p.numel() for p in files["convnext"].parameters())


@pytest.mark.parametrize("name", ["vit_s_timm", "vit_s_orig"])
def test_inspect_rope_vit(files, name, capsys):
    assert harness_cli(["inspect", str(files[name])]) == 0
    text = capsys.readouterr().out
    assert "family:     rope_mixed_vit" in text and "embed_dim:  384" in text and "num_heads:  6" in text
    assert f"parameters: {sum(p.numel() for p in files['vit_s'].parameters()):,}" in text
    assert ("assumed head_dim 64" in text) == name.endswith("orig")


def test_inspect_unknown_and_unreadable(tmp_path, capsys):
    other = save_state_dict({"fc.weight": torch.zeros(2, 3)}, tmp_path / "other.pt")
    assert harness_cli(["inspect", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == "unknown"
    (tmp_path / "weights.npz").write_bytes(b"")
    assert harness_cli(["inspect", str(tmp_path / "weights.npz")]) == 2
    assert "unsupported checkpoint extension '.npz'" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no checkpoint file at"):
        load_state_dict(tmp_path / "missing.pth")


def test_compat_cli_accepts_matching_widths(files, capsys):
    assert harness_cli(["compat", str(files["convnext_orig"]), str(files["vit_s_orig"])]) == 0
    out = capsys.readouterr().out
    assert "| convnext_tiny_22k_1k_384.pth | [96, 192, 384, 768] | 384 | rope_mixed_deit_small_patch16_LS.pth | 384 | Yes |" in out


def test_compat_cli_refuses_convnext_t_with_vit_b(files, capsys):
    assert harness_cli(["compat", str(files["convnext_timm"]), str(files["vit_b_orig"]), "--json"]) == 1
    captured = capsys.readouterr()
    row = json.loads(captured.out)
    assert (row["juncture_dim"], row["rope_input_dim"], row["compatible"]) == (384, 768, False)
    assert "S2 juncture is 384" in captured.err and "(embed_dim) is 768" in captured.err
    # building the hybrid from the same pair raises the same error
    with pytest.raises(ValueError) as refused:
        build_mformer(files["convnext_timm"], files["vit_b_orig"])
    assert f"error: {refused.value}" in captured.err


def test_compat_wants_one_checkpoint_of_each_family(files):
    info = inspect_state_dict(load_state_dict(files["vit_s_timm"]))
    with pytest.raises(ValueError, match=r"ConvNeXt checkpoint .* must be a convnext state dict, got family 'rope_mixed_vit'"):
        compat_row(info, info)


@pytest.mark.parametrize("layouts", [("convnext_timm", "vit_s_timm"), ("convnext_orig", "vit_s_orig")])
def test_build_from_two_checkpoints_matches_timm_assembly(files, layouts):
    model, report = build_mformer(files[layouts[0]], files[layouts[1]])
    model.eval()
    # unused parts are reported, not silently dropped
    assert {k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("stages") else "") for k in report.unused_convnext} == {
        "stages.2", "stages.3", "head"}
    assert "stages.2.downsample.1.weight" not in report.unused_convnext
    expected_vit_unused = {"patch_embed.proj.weight", "patch_embed.proj.bias"}
    if layouts[1].endswith("orig"):
        expected_vit_unused |= {"freqs_t_x", "freqs_t_y"}
    assert set(report.unused_rope_vit) == expected_vit_unused
    assert "unused (head, stages.2, stages.3)" in report.summary()
    # the reference: timm's own modules, loaded from the same (timm-layout) weights
    convnext = timm.create_model("convnext_tiny", pretrained=False, depths=(1, 1, 1, 1))
    convnext.load_state_dict(files["convnext"].state_dict())
    vit = timm.create_model("vit_small_patch16_rope_mixed_224", pretrained=False, depth=1, num_classes=4, img_size=(32, 64))
    pin_eager_attention(vit)
    vit.load_state_dict(files["vit_s"].state_dict())
    reference = TimmMFormerV1(convnext, vit).eval()
    image = torch.randn(2, 3, 32, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(image), reference(image), atol=1e-5, rtol=1e-4)


def test_inspect_recognizes_an_mformer_state_dict(files, tmp_path):
    model, _ = build_mformer(files["convnext_timm"], files["vit_s_timm"])
    info = inspect_state_dict(load_state_dict(save_state_dict(model.state_dict(), tmp_path / "mformer.safetensors")))
    assert (info.family, info.layout) == ("mformer_v1", "timm")
    assert info.dims == {"convnext_depths": [1, 1], "convnext_dims": [96, 192, 384], "embed_dim": 384, "depth": 1,
                         "num_heads": 6}
    assert info.num_params == sum(p.numel() for p in model.parameters())


def test_a_pickle_without_tensors_is_not_a_state_dict(tmp_path):
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, tmp_path / "meta.pth")
    with pytest.raises(ValueError, match=r"meta.pth: no tensors found; top-level keys are \['args', 'epoch'\]"):
        load_state_dict(tmp_path / "meta.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list.pth: expected a state dict \(name -> tensor\), got list"):
        load_state_dict(tmp_path / "list.pth")


def test_a_pickle_with_code_objects_is_refused_not_executed(tmp_path):
    import argparse

    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "train.pth")
    with pytest.raises(ValueError, match=r"train.pth: holds objects other than tensors .* weights_only=True"):
        load_state_dict(tmp_path / "train.pth")
