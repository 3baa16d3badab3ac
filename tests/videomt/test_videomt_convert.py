"""Conversion from the official VidEoMT ``.pth`` layout: config inference, the report, q/k/v
biases, ``weights_only`` loading and the bitwise round trip. Checkpoints are synthetic, written
into ``tmp_path`` in the upstream layout."""

import pickle
import re

import pytest
import torch

from candidates.videomt import VidEoMT, VidEoMTConfig
from candidates.videomt.convert import (
    ConversionReport, convert_upstream, infer_config, load_upstream, save_upstream, to_upstream,
)
from harness import randomize_

CFG = VidEoMTConfig(hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64, patch_size=4, image_size=16,
                    num_register_tokens=2, num_queries=5, num_blocks=2, num_labels=4, num_upscale_blocks=2)
ARCH = dict(num_heads=2, layer_norm_eps=1e-6, hidden_act="gelu")


def _model(cfg=CFG) -> VidEoMT:
    torch.manual_seed(0)
    model = VidEoMT(cfg).eval()
    randomize_(model, torch.Generator().manual_seed(0))
    return model


def _upstream(model: VidEoMT) -> dict:
    state = to_upstream(model.state_dict())
    state["criterion.empty_weight"] = torch.ones(model.cfg.num_labels + 1)
    return state


def test_videomt_upstream_layout_has_the_release_keys():
    state = _upstream(_model())
    vit = "backbone.encoder.backbone."
    for key in [f"{vit}cls_token", f"{vit}reg_token", f"{vit}pos_embed", f"{vit}patch_embed.proj.weight",
                f"{vit}blocks.0.attn.qkv.weight", f"{vit}blocks.0.attn.qkv.bias", f"{vit}blocks.2.ls1.gamma",
                f"{vit}blocks.2.ls2.gamma", f"{vit}norm.weight", "backbone.q.weight", "backbone.query_updater.weight",
                "backbone.class_head.bias", "backbone.mask_head.4.weight", "backbone.upscale.1.norm.bias",
                "backbone.upscale.1.conv2.weight", "backbone.attn_mask_probs"]:
        assert key in state, key
    assert state[f"{vit}pos_embed"].shape == (1, 16, 32)
    assert state[f"{vit}blocks.0.attn.qkv.weight"].shape == (96, 32)


def test_videomt_infer_config_reads_shapes():
    assert infer_config(_upstream(_model()), **ARCH) == CFG


def test_videomt_infer_config_requires_what_shapes_cannot_tell():
    with pytest.raises(TypeError, match="num_heads"):
        infer_config(_upstream(_model()), layer_norm_eps=1e-6, hidden_act="gelu")


def test_videomt_infer_config_names_missing_key():
    state = _upstream(_model())
    del state["backbone.q.weight"]
    with pytest.raises(ValueError, match=r"not an upstream VidEoMT checkpoint: key 'backbone.q.weight' is missing"):
        infer_config(state, **ARCH)


_POS = "backbone.encoder.backbone.pos_embed"


@pytest.mark.parametrize("shape, detail", [
    ((1, 17, 32), "got (1, 17, 32): N = 17 = 1 + 4**2 looks like a grid plus a CLS slot, which this layout "
                  "does not have"),
    ((1, 15, 32), "got (1, 15, 32): N = 15 is not a square number"),
    ((16, 32), "got (16, 32)"),
    ((2, 16, 32), "got (2, 16, 32)"),
    ((1, 16, 24), "got (1, 16, 24)"),
])
def test_videomt_infer_config_says_which_pos_embed_shape_it_expected(shape, detail):
    state = _upstream(_model())
    state[_POS] = torch.zeros(shape)
    expected = f"{_POS} must be (1, N, 32) with N = grid**2 patch positions and no CLS slot, {detail}"
    with pytest.raises(ValueError, match=re.escape(expected) + "$"):
        infer_config(state, **ARCH)


def test_videomt_infer_config_rejects_non_square_patches():
    state = _upstream(_model())
    state["backbone.encoder.backbone.patch_embed.proj.weight"] = torch.zeros(32, 3, 4, 2)
    with pytest.raises(ValueError, match=re.escape("must be (D, C, p, p) with square patches, got (32, 3, 4, 2)")):
        infer_config(state, **ARCH)


def test_videomt_qkv_split_carries_all_three_biases():
    model = _model()
    state = _upstream(model)
    converted, report = convert_upstream(state, CFG)
    qkv_bias = state["backbone.encoder.backbone.blocks.1.attn.qkv.bias"]
    for i, name in enumerate("qkv"):
        part = converted[f"layers.1.attention.{name}_proj.bias"]
        assert torch.equal(part, qkv_bias[32 * i: 32 * (i + 1)])
        assert part.abs().max() > 0.1  # a live bias, not a zero that would hide a dropped copy
    assert report.clean


def test_videomt_report_is_clean_except_documented_leftovers():
    _, report = convert_upstream(_upstream(_model()), CFG)
    assert report.unconverted_source == ["criterion.empty_weight"]
    assert report.missing_target == [] and report.shape_mismatches == []
    assert list(report.filled) == ["embeddings.mask_token"]
    assert report.clean


def test_videomt_report_lists_unconverted_missing_and_mismatched():
    state = _upstream(_model())
    state["backbone.encoder.backbone.blocks.0.ls3.gamma"] = torch.ones(32)  # unknown
    del state["backbone.class_head.bias"]  # missing target
    state["backbone.query_updater.bias"] = torch.ones(31)  # wrong shape
    _, report = convert_upstream(state, CFG)
    assert "backbone.encoder.backbone.blocks.0.ls3.gamma" in report.unconverted_source
    assert report.missing_target == ["class_predictor.bias"]
    assert report.shape_mismatches == [("query_updater.bias", (31,), (32,))]
    assert not report.clean
    assert "missing target keys (1): ['class_predictor.bias']" in report.format()


def test_videomt_load_upstream_strict_raises_with_report(tmp_path):
    state = _upstream(_model())
    del state["backbone.query_updater.weight"]
    save_upstream(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"did not convert cleanly:\n.*\nmissing target keys \(1\): \['query_updater.weight'\]"):
        load_upstream(tmp_path / "bad.pth", **ARCH)
    model, report = load_upstream(tmp_path / "bad.pth", **ARCH, strict=False)
    assert report.missing_target == ["query_updater.weight"]


def test_videomt_checkpoint_file_loads_to_identical_model(tmp_path):
    original = _model()
    with torch.no_grad():
        original.embeddings.mask_token.zero_()  # upstream has no mask token; conversion fills zeros
    save_upstream({"state_dict": _upstream(original)}, tmp_path / "videomt.pth")
    loaded, report = load_upstream(tmp_path / "videomt.pth", **ARCH)
    assert report.clean and loaded.cfg == CFG
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    video = torch.randn(1, 2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(original(video), loaded(video)))


class _Payload:
    """Not a tensor: ``weights_only`` loading must refuse to unpickle it."""

    def __reduce__(self):
        return (print, ("executed",))


def test_videomt_load_upstream_is_weights_only(tmp_path):
    state = _upstream(_model())
    state["payload"] = _Payload()
    torch.save(state, tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_upstream(tmp_path / "evil.pth", **ARCH)


def test_videomt_round_trip_is_bitwise():
    candidate = _model().state_dict()
    upstream = _upstream(_model())
    back, report = convert_upstream(to_upstream(candidate), CFG)
    assert report.clean
    assert back.keys() == candidate.keys()
    for key in candidate:
        if key != "embeddings.mask_token":  # not in the upstream layout: filled, see the report
            assert torch.equal(back[key], candidate[key]) and back[key].dtype == candidate[key].dtype, key
    again = to_upstream(convert_upstream(upstream, CFG)[0])
    assert again.keys() == upstream.keys() - {"criterion.empty_weight"}
    assert all(torch.equal(again[k], upstream[k]) for k in again)


def test_videomt_to_upstream_rejects_mixed_qkv_biases():
    cfg = VidEoMTConfig(**{**CFG.__dict__, "key_bias": False})
    with pytest.raises(ValueError, match=r"needs q, k and v bias tensors alike; layer 0 has \['q', 'v'\] only"):
        to_upstream(VidEoMT(cfg).state_dict())


def test_videomt_save_upstream_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pth"
    save_upstream({"a": torch.ones(1)}, target)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_upstream({"a": torch.zeros(1)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_videomt_conversion_report_defaults_clean():
    assert ConversionReport().clean
