"""VidEoMT weight mappings (``candidates.videomt.convert``), layout by layout.

- Every table (DINOv2 release, DINOv3 release, transformers Videomt and EoMT-DINOv3) reads its
  layout into the candidate's and back, bitwise, and names the keys it does not know.
- The two official releases (``tue-mps/videomt`` ``.pth``): recognition, config inference, the
  conversion report, q/k/v biases (DINOv2's fused qkv; DINOv3's missing key bias, split or fused),
  ``weights_only`` loading and the bitwise round trip through a file.

Checkpoints are synthetic, written in the upstream layouts into ``tmp_path``.
"""

import dataclasses
import pickle
import re
from typing import Callable, NamedTuple

import pytest
import torch
from helpers import write_family_state, write_malicious_checkpoint

from candidates.recognize import inspect_state_dict
from candidates.videomt import VidEoMT, VidEoMTConfig, videomt_dinov3_tiny_config, videomt_tiny_config
from candidates.videomt.convert import (
    RELEASE_DINOV2, RELEASE_DINOV3, TRANSFORMERS_EOMT_DINOV3, TRANSFORMERS_VIDEOMT, ConversionReport,
    convert_hf_eomt_dinov3, convert_hf_videomt, convert_upstream, convert_upstream_dinov3, infer_config,
    infer_config_dinov3, is_dinov3_layout, load_upstream, load_upstream_dinov3, read_checkpoint, recognize,
    save_upstream, to_hf_eomt_dinov3, to_hf_videomt, to_upstream, to_upstream_dinov3,
)
from harness import randomize_
from reference.videomt import hf_eomt_dinov3, hf_videomt

VIT = "backbone.encoder.backbone."
DINOV2 = videomt_tiny_config()
DINOV3 = videomt_dinov3_tiny_config(masked_attention=False)  # VidEoMT never masks attention
DINOV2_ARCH = dict(num_heads=2, layer_norm_eps=1e-6, hidden_act="gelu")
DINOV3_ARCH = dict(DINOV2_ARCH, rope_theta=100.0, image_size=16)


def _model(config: VidEoMTConfig) -> VidEoMT:
    torch.manual_seed(0)
    model = VidEoMT(config).eval()
    randomize_(model, torch.Generator().manual_seed(0))
    return model


def _with_loss_buffer(state: dict, config: VidEoMTConfig) -> dict:
    return {**state, "criterion.empty_weight": torch.ones(config.num_labels + 1)}


class Release(NamedTuple):
    """One release layout: its config, writer, reader, loader and what the loader must be told."""

    config: VidEoMTConfig
    write: Callable[[dict], dict]  # candidate state dict -> release state dict
    convert: Callable
    infer: Callable
    load: Callable
    arch: dict


RELEASES = {
    "dinov2": Release(DINOV2, to_upstream, convert_upstream, infer_config, load_upstream, DINOV2_ARCH),
    "dinov3": Release(DINOV3, to_upstream_dinov3, convert_upstream_dinov3, infer_config_dinov3,
                      load_upstream_dinov3, DINOV3_ARCH),
    "dinov3_fused": Release(DINOV3, lambda s: to_upstream_dinov3(s, fused_qkv=True), convert_upstream_dinov3,
                            infer_config_dinov3, load_upstream_dinov3, DINOV3_ARCH),
}


def _release(layout: str, config: VidEoMTConfig | None = None) -> dict:
    """A release file's state dict, loss buffer included, of a random model of ``config``."""
    release = RELEASES[layout]
    config = config or release.config
    return _with_loss_buffer(release.write(_model(config).state_dict()), config)


def _candidate(config: VidEoMTConfig) -> dict:
    """A candidate state dict as the releases can hold it: DINOv2's mask token is not released (zero)."""
    model = _model(config)
    if hasattr(model.embeddings, "mask_token"):
        with torch.no_grad():
            model.embeddings.mask_token.zero_()
    return model.state_dict()


# ----------------------------------------------------------------------------- every table, both ways

# table -> (the table, a state dict in its upstream layout, one in the candidate's)
TABLES = {
    "dinov2_release": lambda: (RELEASE_DINOV2, _release("dinov2"), _candidate(DINOV2)),
    "dinov3_release": lambda: (RELEASE_DINOV3, _release("dinov3"), _candidate(DINOV3)),
    "transformers_videomt": lambda: (TRANSFORMERS_VIDEOMT, hf_videomt(DINOV2).state_dict(), _candidate(DINOV2)),
    "transformers_eomt_dinov3": lambda: (TRANSFORMERS_EOMT_DINOV3,
                                         hf_eomt_dinov3(videomt_dinov3_tiny_config()).state_dict(),
                                         _candidate(videomt_dinov3_tiny_config())),
}


def _same_tensors(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), f"{what}: extra {sorted(got.keys() - want.keys())}, " \
                                      f"missing {sorted(want.keys() - got.keys())}"
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), f"{what}: {key} differs"


# Keys a table knows and does not carry, by the side it reads toward: the loss buffer of every upstream
# layout; the candidate's mask token (the DINOv2 release has none) and query updater (EoMT has none).
NOT_CARRIED = {"candidate": {"criterion.empty_weight"},
               "reference": {"embeddings.mask_token", "query_updater.weight", "query_updater.bias"}}


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("to", ["candidate", "reference"])
def test_a_layout_round_trips_through_its_table(table, to):
    """Read one way and back, a state dict comes back bitwise, but for the keys the other layout has no place for."""
    keys, upstream, candidate = TABLES[table]()
    state = upstream if to == "candidate" else candidate
    there = keys.map(state, to=to)
    assert there.unmatched == [] and set(there.ignored) <= NOT_CARRIED[to], (there.unmatched, there.ignored)
    back = keys.map(there.state, to="reference" if to == "candidate" else "candidate")
    _same_tensors(back.state, {k: v for k, v in state.items() if k not in there.ignored},
                  f"{keys.name}, read toward the {to} and back")


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("to", ["candidate", "reference"])
def test_a_table_names_the_keys_it_does_not_know(table, to):
    keys, upstream, candidate = TABLES[table]()
    state = {**(upstream if to == "candidate" else candidate), "mystery.weight": torch.ones(1)}
    with pytest.raises(ValueError, match=rf"^{re.escape(keys.name)}: 1 of {len(state)} keys match no rule: "
                                         r"'mystery\.weight'"):
        keys.map(state, to=to)


def test_transformers_videomt_state_dict_loads_strictly_into_the_candidate():
    reference = hf_videomt(DINOV2)
    candidate = VidEoMT(DINOV2)
    candidate.load_state_dict(convert_hf_videomt(reference.state_dict()), strict=True)
    back = to_hf_videomt(candidate.state_dict())
    assert back.keys() == reference.state_dict().keys() - {"criterion.empty_weight"}


def test_transformers_eomt_dinov3_state_dict_loads_with_a_zero_query_updater():
    """EoMT has no query updater (single frames): the candidate's is zero, and not written back."""
    config = videomt_dinov3_tiny_config()
    reference = hf_eomt_dinov3(config)
    candidate = VidEoMT(config)
    candidate.load_state_dict(convert_hf_eomt_dinov3(reference.state_dict()), strict=True)
    assert not candidate.query_updater.weight.any() and not candidate.query_updater.bias.any()
    back = to_hf_eomt_dinov3(candidate.state_dict())
    assert back.keys() == reference.state_dict().keys() - {"criterion.empty_weight"}


def test_transformers_conversion_names_a_key_of_another_layout():
    state = {**hf_videomt(DINOV2).state_dict(), "blocks.0.norm1.weight": torch.ones(32)}
    with pytest.raises(ValueError, match=r"transformers Videomt: 1 of \d+ keys match no rule: "
                                         r"'blocks\.0\.norm1\.weight'"):
        convert_hf_videomt(state)


# ----------------------------------------------------------------------------- the release layouts


def test_dinov2_release_has_the_release_keys():
    state = _release("dinov2")
    for key in [f"{VIT}cls_token", f"{VIT}reg_token", f"{VIT}pos_embed", f"{VIT}patch_embed.proj.weight",
                f"{VIT}blocks.0.attn.qkv.weight", f"{VIT}blocks.0.attn.qkv.bias", f"{VIT}blocks.2.ls1.gamma",
                f"{VIT}blocks.2.ls2.gamma", f"{VIT}norm.weight", "backbone.q.weight", "backbone.query_updater.weight",
                "backbone.class_head.bias", "backbone.mask_head.4.weight", "backbone.upscale.1.norm.bias",
                "backbone.upscale.1.conv2.weight", "backbone.attn_mask_probs"]:
        assert key in state, key
    assert state[f"{VIT}pos_embed"].shape == (1, 16, 32)
    assert state[f"{VIT}blocks.0.attn.qkv.weight"].shape == (96, 32)
    assert not is_dinov3_layout(state)


def test_dinov3_release_has_the_release_keys():
    state = _release("dinov3")
    for key in [f"{VIT}patch_embed.cls_token", f"{VIT}patch_embed.register_tokens",
                f"{VIT}patch_embed.patch_embeddings.weight", f"{VIT}blocks.0.attention.q_proj.bias",
                f"{VIT}blocks.0.attention.k_proj.weight", f"{VIT}blocks.2.attention.o_proj.bias",
                f"{VIT}blocks.1.layer_scale1.lambda1", f"{VIT}blocks.1.layer_scale2.lambda1",
                f"{VIT}blocks.1.mlp.up_proj.weight", f"{VIT}blocks.1.mlp.down_proj.bias", f"{VIT}norm.weight",
                "backbone.q.weight", "backbone.query_updater.bias", "backbone.mask_head.4.weight",
                "backbone.upscale.1.norm.bias", "backbone.attn_mask_probs"]:
        assert key in state, key
    assert not any("pos_embed" in k or "mask_token" in k or "k_proj.bias" in k for k in state)
    assert is_dinov3_layout(state)


def test_dinov3_fused_release_writes_upstreams_zero_key_bias():
    fused = _release("dinov3_fused")
    assert fused[f"{VIT}blocks.0.attention.qkv_proj.weight"].shape == (96, 32)
    assert torch.equal(fused[f"{VIT}blocks.0.attention.qkv_proj.bias"][32:64], torch.zeros(32))
    assert not any(re.search(r"\.[qkv]_proj\.", k) for k in fused)


@pytest.mark.parametrize("layout", RELEASES)
def test_release_config_is_read_off_the_checkpoint(layout):
    release = RELEASES[layout]
    assert release.infer(_release(layout), **release.arch) == release.config


@pytest.mark.parametrize("layout, missing", [("dinov2", "num_heads"), ("dinov3", "num_heads"),
                                             ("dinov3", "rope_theta"), ("dinov3", "image_size")])
def test_release_config_needs_what_the_checkpoint_cannot_tell(layout, missing):
    release = RELEASES[layout]
    with pytest.raises(TypeError, match=missing):
        release.infer(_release(layout), **{k: v for k, v in release.arch.items() if k != missing})


@pytest.mark.parametrize("layout", ["dinov2", "dinov3"])
def test_release_config_names_a_missing_key(layout):
    release = RELEASES[layout]
    state = _release(layout)
    del state["backbone.q.weight"]
    with pytest.raises(ValueError, match=r"not an upstream VidEoMT checkpoint: key 'backbone.q.weight' is missing"):
        release.infer(state, **release.arch)


_POS = f"{VIT}pos_embed"


@pytest.mark.parametrize("shape, detail", [
    ((1, 17, 32), "got (1, 17, 32): N = 17 = 1 + 4**2 looks like a grid plus a CLS slot, which this layout "
                  "does not have"),
    ((1, 15, 32), "got (1, 15, 32): N = 15 is not a square number"),
    ((16, 32), "got (16, 32)"),
    ((2, 16, 32), "got (2, 16, 32)"),
    ((1, 16, 24), "got (1, 16, 24)"),
])
def test_dinov2_config_says_which_pos_embed_shape_it_expected(shape, detail):
    state = {**_release("dinov2"), _POS: torch.zeros(shape)}
    expected = f"{_POS} must be (1, N, 32) with N = grid**2 patch positions and no CLS slot, {detail}"
    with pytest.raises(ValueError, match=re.escape(expected) + "$"):
        infer_config(state, **DINOV2_ARCH)


@pytest.mark.parametrize("layout, key", [("dinov2", f"{VIT}patch_embed.proj.weight"),
                                         ("dinov3", f"{VIT}patch_embed.patch_embeddings.weight")])
def test_release_config_rejects_non_square_patches(layout, key):
    release = RELEASES[layout]
    state = {**_release(layout), key: torch.zeros(32, 3, 4, 2)}
    expected = f"{key} must be (D, C, p, p) with square patches, got (32, 3, 4, 2)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        release.infer(state, **release.arch)


def test_release_layouts_are_told_apart():
    with pytest.raises(ValueError, match=r"this is the DINOv3 release layout .* use .*infer_config_dinov3"):
        infer_config(_release("dinov3"), **DINOV2_ARCH)
    dinov2 = {k: v for k, v in _release("dinov3").items() if "patch_embeddings" not in k}
    missing = r"not a VidEoMT DINOv3 checkpoint: key '.*patch_embeddings.weight' is missing"
    with pytest.raises(ValueError, match=missing):
        infer_config_dinov3(dinov2, **DINOV3_ARCH)
    with pytest.raises(ValueError, match=r"this is a dinov2 model; use candidates.videomt.convert.to_upstream"):
        to_upstream_dinov3(VidEoMT(DINOV2).state_dict())
    with pytest.raises(ValueError, match=r"a dinov3 model is written by .*to_upstream_dinov3"):
        to_upstream(VidEoMT(DINOV3).state_dict())
    with pytest.raises(ValueError, match="needs a dinov3 config, got backbone='dinov2'"):
        convert_upstream_dinov3(_release("dinov3"), DINOV2)


def test_dinov3_unsupported_releases_are_refused():
    gated = {**_release("dinov3"), f"{VIT}blocks.0.mlp.gate_proj.weight": torch.zeros(64, 32)}
    with pytest.raises(ValueError, match=r"gated-MLP .* not supported .*blocks.0.mlp.gate_proj.weight"):
        infer_config_dinov3(gated, **DINOV3_ARCH)
    eomt = {f"network.{k[len('backbone.'):]}": v for k, v in _release("dinov3").items() if k.startswith("backbone.")}
    deltas = r"EoMT-DINOv3 release layout \(network\.\*\): its backbone tensors are deltas"
    with pytest.raises(ValueError, match=deltas):
        infer_config_dinov3(eomt, **DINOV3_ARCH)
    mixed = _release("dinov3_fused")
    mixed.update({k: v for k, v in _release("dinov3").items() if ".blocks.1.attention." in k})
    with pytest.raises(ValueError, match="block 1 has both fused qkv_proj and split q/k/v projections"):
        infer_config_dinov3(mixed, **DINOV3_ARCH)


def test_dinov2_qkv_split_carries_all_three_biases():
    state = _release("dinov2")
    converted, report = convert_upstream(state, DINOV2)
    qkv_bias = state[f"{VIT}blocks.1.attn.qkv.bias"]
    for i, name in enumerate("qkv"):
        part = converted[f"layers.1.attention.{name}_proj.bias"]
        assert torch.equal(part, qkv_bias[32 * i: 32 * (i + 1)])
        assert part.abs().max() > 0.1  # a live bias, not a zero that would hide a dropped copy
    assert report.clean


def test_dinov2_release_cannot_hold_a_model_without_key_bias():
    """The release fuses q, k and v: a model with q and v biases only has no such tensor."""
    with pytest.raises(ValueError, match=r"'layers\.0\.attention\.q_proj\.bias' is read together with "
                                         r"\['layers\.0\.attention\.k_proj\.bias'\], which the state lacks"):
        to_upstream(VidEoMT(dataclasses.replace(DINOV2, key_bias=False)).state_dict())


def test_dinov3_key_bias_present_in_the_split_form_is_carried():
    config = dataclasses.replace(DINOV3, key_bias=True)
    state = _release("dinov3", config)
    assert infer_config_dinov3(state, **DINOV3_ARCH) == config
    converted, report = convert_upstream_dinov3(state, config)
    assert torch.equal(converted["layers.1.attention.k_proj.bias"], state[f"{VIT}blocks.1.attention.k_proj.bias"])
    assert report.clean


def test_dinov3_fused_bias_segments_are_split_exactly():
    """q and v segments are carried bit for bit; the all-zero k fill is dropped (exact: adding 0)."""
    state = _release("dinov3_fused")
    converted, report = convert_upstream_dinov3(state, DINOV3)
    fused = state[f"{VIT}blocks.2.attention.qkv_proj.bias"]
    assert torch.equal(converted["layers.2.attention.q_proj.bias"], fused[:32])
    assert torch.equal(converted["layers.2.attention.v_proj.bias"], fused[64:])
    assert converted["layers.2.attention.v_proj.bias"].abs().max() > 0.1  # live, not a hidden zero
    assert "layers.2.attention.k_proj.bias" not in converted and report.clean


def test_dinov3_nonzero_fused_key_bias_is_carried_never_dropped():
    config = dataclasses.replace(DINOV3, key_bias=True)
    state = _release("dinov3_fused", config)
    assert infer_config_dinov3(state, **DINOV3_ARCH).key_bias  # a nonzero segment means a key bias
    converted, report = convert_upstream_dinov3(state, config)
    fused_k = state[f"{VIT}blocks.0.attention.qkv_proj.bias"][32:64]
    assert torch.equal(converted["layers.0.attention.k_proj.bias"], fused_k)
    assert report.clean
    _, lossy = convert_upstream_dinov3(state, DINOV3)  # a config without key bias cannot hold it: reported
    assert f"{VIT}blocks.0.attention.qkv_proj.bias[k]" in lossy.unconverted_source and not lossy.clean


# ----------------------------------------------------------------------------- the conversion report


@pytest.mark.parametrize("layout", RELEASES)
def test_release_report_is_clean_but_for_the_documented_leftovers(layout):
    release = RELEASES[layout]
    _, report = release.convert(_release(layout), release.config)
    assert report.unconverted_source == ["criterion.empty_weight"]
    assert report.missing_target == [] and report.shape_mismatches == []
    assert list(report.filled) == (["embeddings.mask_token"] if layout == "dinov2" else [])
    assert report.clean


@pytest.mark.parametrize("layout, unknown", [("dinov2", f"{VIT}blocks.0.ls3.gamma"),
                                             ("dinov3", f"{VIT}rope_embeddings.inv_freq")])
def test_release_report_lists_unconverted_missing_and_mismatched(layout, unknown):
    release = RELEASES[layout]
    state = {**_release(layout), unknown: torch.ones(4), "backbone.query_updater.bias": torch.ones(31)}
    del state["backbone.class_head.bias"]
    _, report = release.convert(state, release.config)
    assert unknown in report.unconverted_source
    assert report.missing_target == ["class_predictor.bias"]
    assert report.shape_mismatches == [("query_updater.bias", (31,), (32,))]
    assert not report.clean
    assert "missing target keys (1): ['class_predictor.bias']" in report.format()


def test_release_report_names_the_source_of_a_key_the_config_lacks():
    state = _release("dinov2")
    _, report = convert_upstream(state, dataclasses.replace(DINOV2, num_upscale_blocks=1))
    assert "backbone.upscale.1.conv1.weight" in report.unconverted_source and not report.clean


def test_conversion_report_defaults_clean():
    assert ConversionReport().clean


# ----------------------------------------------------------------------------- round trips and files


@pytest.mark.parametrize("layout", RELEASES)
def test_release_round_trip_is_bitwise(layout):
    release = RELEASES[layout]
    candidate = _candidate(release.config)
    back, report = release.convert(release.write(candidate), release.config)
    assert report.clean
    _same_tensors(back, candidate, f"{layout}: candidate -> release -> candidate")  # mask token: zeros, filled
    upstream = _release(layout)
    again = release.write(release.convert(upstream, release.config)[0])
    assert again.keys() == upstream.keys() - {"criterion.empty_weight"}
    for key in again:  # bitwise: same bytes, signed zeros included
        assert again[key].view(torch.int32).equal(upstream[key].view(torch.int32)), key


@pytest.mark.parametrize("layout, wrapper", [("dinov2", "state_dict"), ("dinov3", None), ("dinov3_fused", "model")])
def test_release_file_loads_to_an_identical_model(tmp_path, layout, wrapper):
    release = RELEASES[layout]
    original = _model(release.config)
    if hasattr(original.embeddings, "mask_token"):
        with torch.no_grad():
            original.embeddings.mask_token.zero_()  # not released; conversion fills zeros
    state = _with_loss_buffer(release.write(original.state_dict()), release.config)
    save_upstream(state if wrapper is None else {wrapper: state, "iteration": torch.tensor(7)}, tmp_path / "r.pth")
    loaded, report = release.load(tmp_path / "r.pth", **release.arch)
    assert report.clean and loaded.config == release.config
    _same_tensors(loaded.state_dict(), original.state_dict(), f"{layout} file")
    video = torch.randn(1, 2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(original(video), loaded(video)))


@pytest.mark.parametrize("layout", ["dinov2", "dinov3"])
def test_release_load_strict_raises_with_the_report(tmp_path, layout):
    release = RELEASES[layout]
    state = _release(layout)
    del state["backbone.query_updater.weight"]
    save_upstream(state, tmp_path / "bad.pth")
    expected = r"did not convert cleanly:\n.*\nmissing target keys \(1\): \['query_updater.weight'\]"
    with pytest.raises(ValueError, match=expected):
        release.load(tmp_path / "bad.pth", **release.arch)
    _, report = release.load(tmp_path / "bad.pth", **release.arch, strict=False)
    assert report.missing_target == ["query_updater.weight"]


@pytest.mark.parametrize("layout", ["dinov2", "dinov3"])
def test_a_lenient_load_carries_every_key_but_the_reported_ones(tmp_path, layout):
    release = RELEASES[layout]
    state = {**_release(layout), "backbone.query_updater.bias": torch.ones(31)}
    del state["backbone.class_head.bias"]
    save_upstream(state, tmp_path / "partial.pth")
    model, report = release.load(tmp_path / "partial.pth", **release.arch, strict=False)
    converted, _ = release.convert(state, release.config)
    reported = {"class_predictor.bias", "query_updater.bias"}
    assert {*report.missing_target, *(key for key, _, _ in report.shape_mismatches)} == reported
    loaded = model.state_dict()
    assert loaded["query_updater.bias"].shape == (32,), "a misshapen tensor replaced the model's own"
    for key in loaded.keys() - reported:
        assert torch.equal(loaded[key], converted[key]), f"{key} was not loaded"


@pytest.mark.parametrize("layout", ["dinov2", "dinov3"])
def test_release_load_is_weights_only(tmp_path, layout):
    release = RELEASES[layout]
    path = write_malicious_checkpoint(tmp_path / "evil.pth", _release(layout), marker=tmp_path / "pwned")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        release.load(path, **release.arch)
    assert not (tmp_path / "pwned").exists(), "unpickling ran the checkpoint's code"


def test_read_checkpoint_wants_a_state_dict(tmp_path):
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"expected a state dict .* got list"):
        read_checkpoint(tmp_path / "list.pth")


def test_save_upstream_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pth"
    save_upstream({"a": torch.ones(1)}, target)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_upstream({"a": torch.zeros(1)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


# ----------------------------------------------------------------------------- other families' files


@pytest.mark.parametrize("family", ["convnext", "rope_vit", "resampler", "videomt_dinov3", "eomt_dinov3"])
def test_videomt_loader_names_the_file_of_a_foreign_family(tmp_path, family):
    path = write_family_state(tmp_path, family)
    with pytest.raises(ValueError) as caught:
        load_upstream(path, **DINOV2_ARCH)
    assert str(path) in str(caught.value), f"the error does not name {path}: {caught.value}"


@pytest.mark.parametrize("family", ["convnext", "rope_vit", "resampler", "videomt_dinov2", "eomt_dinov3"])
def test_videomt_dinov3_loader_names_the_file_of_a_foreign_family(tmp_path, family):
    path = write_family_state(tmp_path, family, ".safetensors")
    with pytest.raises(ValueError) as caught:
        load_upstream_dinov3(path, **DINOV3_ARCH)
    assert str(path) in str(caught.value), f"the error does not name {path}: {caught.value}"


@pytest.mark.parametrize("loader", [load_upstream, load_upstream_dinov3])
@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_videomt_loaders_name_an_unreadable_file(tmp_path, loader, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=str(path)):
        loader(path, **DINOV3_ARCH) if loader is load_upstream_dinov3 else loader(path, **DINOV2_ARCH)


# ----------------------------------------------------------------------------- recognition


@pytest.mark.parametrize("layout, variant", [("dinov2", "videomt_tiny"), ("dinov3", "videomt_dinov3_tiny"),
                                             ("dinov3_fused", "videomt_dinov3_tiny")])
def test_recognize_reads_a_release_and_its_dimensions(layout, variant):
    release = RELEASES[layout]
    state = _release(layout)
    info = recognize(state)
    assert (info.family, info.layout, info.variant) == ("videomt", layout.removesuffix("_fused"), variant)
    stored = {k: v for k, v in dataclasses.asdict(release.config).items()
              if k not in ("backbone", "num_heads", "layer_norm_eps", "hidden_act", "rope_theta", "masked_attention")
              and not (k == "image_size" and layout != "dinov2")}  # DINOv3 positions are RoPE: no image size
    assert info.dims == stored
    assert info.num_tensors == len(state)
    assert info.num_params == sum(v.numel() for v in state.values())
    assert info.num_heads_source is None and any("num_heads" in note for note in info.notes)


def test_recognize_notes_a_fused_qkv():
    assert any("fused attention.qkv_proj" in note for note in recognize(_release("dinov3_fused")).notes)
    assert not any("fused" in note for note in recognize(_release("dinov3")).notes)


@pytest.mark.parametrize("layout", ["dinov2", "dinov3"])
def test_recognize_reports_given_heads(layout):
    info = recognize(_release(layout), num_heads=2)
    assert info.dims["num_heads"] == 2 and info.num_heads_source == "given"


@pytest.mark.parametrize("layout, heads, error, message", [
    ("dinov2", 3, ValueError, r"num_heads must be one of \[1, 2, 4, 8, 16, 32\], got 3; the heads split hidden "
                              r"size 32 of this dinov2 release$"),
    ("dinov3", 16, ValueError, r"num_heads must be one of \[1, 2, 4, 8\], got 16; the heads split hidden size 32 "
                               r"of this dinov3 release into head_dim divisible by 4$"),
    ("dinov2", "2", TypeError, r"num_heads must be an int >= 1, got str '2'"),
])
def test_recognize_refuses_heads_that_do_not_fit(layout, heads, error, message):
    with pytest.raises(error, match=message):
        recognize(_release(layout), num_heads=heads)


def test_recognize_does_not_claim_other_layouts():
    others = {
        "transformers Videomt": hf_videomt(DINOV2).state_dict(),
        "candidate": _candidate(DINOV2),
        "EoMT-DINOv3 deltas": {f"network.{k[len('backbone.'):]}": v for k, v in _release("dinov3").items()
                               if k.startswith("backbone.")},
        "empty": {},
    }
    assert {name: recognize(state) for name, state in others.items()} == dict.fromkeys(others)


def test_recognize_names_what_a_malformed_release_lacks():
    state = _release("dinov3")
    del state["backbone.attn_mask_probs"]
    with pytest.raises(ValueError, match="key 'backbone.attn_mask_probs' is missing"):
        recognize(state)


@pytest.mark.parametrize("layout", ["dinov2", "dinov3"])
def test_the_checkpoint_inspector_finds_a_videomt_release(layout):
    info = inspect_state_dict(_release(layout), path="release.pth")
    assert (info.family, info.layout, info.path) == ("videomt", layout, "release.pth")
