"""mFormerV1 from two checkpoints (candidates.mformer.assembly): inspection, the compatibility table, the build.

Test checkpoints are written here from the key names of each layout: timm's, the original
ConvNeXt release's (``downsample_layers.*``, ``stages.i.j.dwconv``...) and the original RoPE-ViT
release's (``freqs``, ``freqs_t_x``, ``freqs_t_y``), the latter two wrapped in ``{"model": ...}``.
Full-size checkpoints would be gigabytes, so files use reduced depths (dims unchanged, which is
all that inspection and compatibility read) and the compatibility table is built from meta-device state
dicts of the full variants and compared with a hand transcription of its published rows.

Head counts: a 2-head toy ViT (embed_dim 64, where head_dim 64 would wrongly give 1 head) checks
that inspection says where the count comes from (derived / given / assumed), that a given count
is checked against the shapes, and that building from an assumed count for unreleased dims is
refused until ``num_heads`` is passed.
"""

from __future__ import annotations

import json
import re

import pytest
import timm
import torch
from helpers import write_family_state

from candidates.convnext.convert import convnext_to_original
from candidates.io import load_state_dict, save_state_dict
from candidates.mformer import build_mformer, compat_row
from candidates.recognize import inspect_state_dict
from candidates.rope_vit.convert import rope_vit_to_original, to_timm_layout
from candidates.convnext import ConvNeXt, ConvNeXtConfig, convnext_large, convnext_small, convnext_tiny, convnext_xlarge
from candidates.rope_vit import rope_mixed_vit
from harness.cli import main as harness_cli
from reference.mformer import TimmMFormerV1
from reference.rope_vit import pin_eager_attention

RELEASED_PAIRS = [
    ("convnext_tiny_22k_1k_384.pth", convnext_tiny, "rope_mixed_deit_small_patch16_LS.pth", "small"),
    ("convnext_small_22k_1k_384.pth", convnext_small, "rope_mixed_deit_small_patch16_LS.pth", "small"),
    ("convnext_large_22k_1k_384.pth", convnext_large, "rope_mixed_deit_base_patch16_LS.pth", "base"),
    ("convnext_xlarge_22k_1k_384_ema.pth", convnext_xlarge, "rope_mixed_deit_large_patch16_LS.pth", "large"),
]

# The mFormerV1 compatibility table as the design publishes it, written out by hand so the computed
# rows are checked against an independent transcription: one tuple per row, Variant, ConvNeXt
# Checkpoint, ConvNeXt Stages (DIMS), Output Dim @ S2 Juncture, RoPE-ViT Checkpoint, RoPE Input Dim,
# Compatible?. The RoPE-ViT checkpoints appear without ".pth" there and with it in the variant list.
PUBLISHED_TABLE = [
    ("mFormerV1_sm", "convnext_tiny_22k_1k_384.pth", [96, 192, 384, 768], 384,
     "rope_mixed_deit_small_patch16_LS", 384, True),
    ("mFormerV1_md", "convnext_small_22k_1k_384.pth", [96, 192, 384, 768], 384,
     "rope_mixed_deit_small_patch16_LS", 384, True),
    ("mFormerV1_lg", "convnext_large_22k_1k_384.pth", [192, 384, 768, 1536], 768,
     "rope_mixed_deit_base_patch16_LS", 768, True),
    ("mFormerV1_xl", "convnext_xlarge_22k_1k_384_ema.pth", [256, 512, 1024, 2048], 1024,
     "rope_mixed_deit_large_patch16_LS", 1024, True),
]


def _released_rows() -> list[dict]:
    """The table rows computed from meta-device state dicts of the full variants, original layouts."""
    rows = []
    for convnext_file, convnext_factory, vit_file, vit_variant in RELEASED_PAIRS:
        with torch.device("meta"):
            convnext, vit = convnext_factory(), rope_mixed_vit(vit_variant)
        # the real files are the original releases: inspect them in the original layouts
        convnext_info = inspect_state_dict(convnext_to_original(convnext.state_dict()), path=convnext_file)
        vit_info = inspect_state_dict(rope_vit_to_original(vit.state_dict()), path=vit_file)
        assert (convnext_info.layout, vit_info.layout) == ("original", "original")
        row = compat_row(convnext_info, vit_info).to_dict()
        assert row.pop("error") is None
        rows.append(row)
    return rows


def test_compatibility_table_equals_the_published_table():
    computed = [
        (r["variant"], r["convnext_checkpoint"], r["convnext_dims"], r["juncture_dim"],
         r["rope_vit_checkpoint"].removesuffix(".pth"), r["rope_input_dim"], r["compatible"])
        for r in _released_rows()
    ]
    assert computed == PUBLISHED_TABLE


@pytest.mark.golden
def test_compatibility_table_golden(golden):
    golden("mformer_compat_table", _released_rows())


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
    assert "family:     rope_mixed_vit" in text and "embed_dim:  384" in text
    assert f"parameters: {sum(p.numel() for p in files['vit_s'].parameters()):,}" in text
    assert ("assumed head_dim 64" in text) == name.endswith("orig")
    assert "num_heads:  6 (assumed)" in text if name.endswith("orig") else "num_heads:  6 (derived)" in text


# --- head counts: derived where a shape stores them, given or refused where none does ------------

TOY_DIMS = (16, 32, 64, 128)  # ConvNeXt widths whose juncture (64) fits the 2-head toy ViT below


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory):
    """A 2-head toy RoPE-ViT (embed_dim 64, head_dim 32), both layouts, and a ConvNeXt that fits it.

    head_dim 64 would give 1 head: the guess the original layout used to make silently.
    """
    root = tmp_path_factory.mktemp("heads")
    torch.manual_seed(4)
    vit = rope_mixed_vit("small", embed_dim=64, num_heads=2, depth=1, num_classes=4).eval()
    with torch.no_grad():
        vit.rope.freqs.normal_()
        for block in vit.blocks:
            block.gamma_1.fill_(0.5)
            block.gamma_2.fill_(0.5)
    convnext = _small_convnext(TOY_DIMS)
    return {
        "vit": vit,
        "timm": save_state_dict(vit.state_dict(), root / "toy_rope.safetensors"),
        "orig": save_state_dict(rope_vit_to_original(vit.state_dict()), root / "toy_rope_orig.pth", wrap="model"),
        "convnext": save_state_dict(convnext.state_dict(), root / "toy_convnext.safetensors"),
    }


def _inspect_json(path, capsys, *extra) -> dict:
    assert harness_cli(["inspect", str(path), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_head_count_source_is_visible_in_inspect_json(two_heads, capsys):
    derived = _inspect_json(two_heads["timm"], capsys)
    assert (derived["dims"]["num_heads"], derived["num_heads_source"]) == (2, "derived")
    assumed = _inspect_json(two_heads["orig"], capsys)
    assert (assumed["dims"]["num_heads"], assumed["num_heads_source"]) == (1, "assumed")
    assert any("building needs --num-heads" in note and "[1, 2, 4, 8, 16]" in note for note in assumed["notes"])
    given = _inspect_json(two_heads["orig"], capsys, "--num-heads", "2")
    assert (given["dims"]["num_heads"], given["num_heads_source"]) == (2, "given")
    assert given["notes"] == []
    convnext = _inspect_json(two_heads["convnext"], capsys)
    assert convnext["num_heads_source"] is None


def test_head_count_source_is_visible_in_inspect_text(two_heads, capsys):
    assert harness_cli(["inspect", str(two_heads["orig"])]) == 0
    assert "num_heads:  1 (assumed)" in capsys.readouterr().out
    assert harness_cli(["inspect", str(two_heads["orig"]), "--num-heads", "2"]) == 0
    assert "num_heads:  2 (given)" in capsys.readouterr().out


@pytest.mark.parametrize(("layout", "heads", "message"), [
    ("timm", "1", r"num_heads=1 contradicts the checkpoint: rope.freqs \(2, 1, 2, 16\) stores 2 heads"),
    ("orig", "3", r"num_heads=3 does not fit embed_dim 64: .* head counts that fit: \[1, 2, 4, 8, 16\]"),
    ("orig", "0", r"num_heads must be a positive int, got 0"),
    ("convnext", "2", r"num_heads applies to checkpoints with attention heads; .*toy_convnext.safetensors is a convnext checkpoint"),
])
def test_inspect_refuses_a_head_count_the_shapes_contradict(two_heads, capsys, layout, heads, message):
    assert harness_cli(["inspect", str(two_heads[layout]), "--num-heads", heads]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_build_refuses_an_assumed_head_count_for_unreleased_dims(two_heads):
    with pytest.raises(ValueError, match=(
        r"toy_rope_orig.pth: the original layout does not store num_heads and embed_dim 64 / depth 1 match no "
        r"released variant \(head_dim 64 would give 1\); pass num_heads= \(CLI: --num-heads\), one of \[1, 2, 4, 8, 16\]"
    )):
        build_mformer(two_heads["convnext"], two_heads["orig"])
    state = load_state_dict(two_heads["orig"])
    with pytest.raises(ValueError, match=r"pass num_heads="):
        to_timm_layout(state, inspect_state_dict(state))


def test_build_with_the_given_head_count_equals_the_derived_one(two_heads):
    image = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(5))
    derived, _ = build_mformer(two_heads["convnext"], two_heads["timm"])
    given, report = build_mformer(two_heads["convnext"], two_heads["orig"], num_heads=2)
    assert (derived.config.vit.num_heads, given.config.vit.num_heads) == (2, 2)
    assert {"freqs_t_x", "freqs_t_y"} <= set(report.unused_rope_vit)
    # the wrong split loads without a shape error, which is why an assumed count is refused
    wrong, _ = build_mformer(two_heads["convnext"], two_heads["orig"], num_heads=1)
    with torch.no_grad():
        truth = derived.eval()(image)
        assert torch.equal(given.eval()(image), truth)
        assert not torch.allclose(wrong.eval()(image), truth, atol=1e-3)
    with pytest.raises(ValueError, match=r"num_heads=1 contradicts the checkpoint"):
        build_mformer(two_heads["convnext"], two_heads["timm"], num_heads=1)


def test_to_timm_layout_takes_num_heads(two_heads):
    state = load_state_dict(two_heads["orig"])
    converted, dropped = to_timm_layout(state, inspect_state_dict(state), num_heads=2)
    assert dropped == ["freqs_t_x", "freqs_t_y"]
    assert torch.equal(converted["rope.freqs"], two_heads["vit"].state_dict()["rope.freqs"])
    assert converted["rope.freqs"].shape == (2, 1, 2, 16)


@pytest.mark.parametrize(("variant", "heads"), [("small", 6), ("base", 12), ("large", 16)])
def test_released_dims_in_the_original_layout_build_with_the_variants_heads(variant, heads):
    with torch.device("meta"):
        state = rope_vit_to_original(rope_mixed_vit(variant).state_dict())
    info = inspect_state_dict(state)
    assert (info.variant, info.dims["num_heads"], info.num_heads_source) == (f"rope_mixed_vit_{variant}", heads, "assumed")
    assert f"as in the released rope_mixed_vit_{variant}" in info.notes[0]
    converted, _ = to_timm_layout(state, info)
    assert converted["rope.freqs"].shape[2] == heads


def test_compat_takes_num_heads(two_heads, capsys):
    args = ["compat", str(two_heads["convnext"]), str(two_heads["orig"]), "--json"]
    assert harness_cli(args + ["--num-heads", "2"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["juncture_dim"], row["rope_input_dim"], row["compatible"]) == (64, 64, True)
    assert harness_cli(args + ["--num-heads", "3"]) == 2
    assert "num_heads=3 does not fit embed_dim 64" in capsys.readouterr().err


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
    # the original layout does not store heads and depth 1 is no released variant: heads are given
    num_heads = 6 if layouts[1].endswith("orig") else None
    model, report = build_mformer(files[layouts[0]], files[layouts[1]], num_heads=num_heads)
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
    assert info.num_heads_source == "derived"  # from rope.freqs (2, depth, heads, head_dim / 2)
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


def test_build_mformer_names_the_file_that_is_not_a_convnext(tmp_path):
    vit = write_family_state(tmp_path, "rope_vit")
    other = write_family_state(tmp_path, "resampler")
    with pytest.raises(ValueError, match=str(other)):
        build_mformer(other, vit)


def test_compat_cli_checks_a_pair_without_importing_torch(files):
    from helpers import cli_in_fresh_process

    codes, torch_modules = cli_in_fresh_process(["compat", files["convnext_orig"], files["vit_s_orig"]])
    assert (codes, torch_modules) == ([0], []), (
        f"exit code {codes[0]}, imported {torch_modules}; "
        "`python -X importtime -m harness compat CONVNEXT ROPE_VIT 2>&1 | grep -B5 torch` shows which import pulls it")
