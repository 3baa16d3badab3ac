"""Conversion from the official VidEoMT DINOv3 release layout (RoPE, no pos_embed, no key bias):
config inference, the report, the key bias in split and fused form, ``weights_only`` loading,
the bitwise round trip, and parity of converted weights with transformers' EoMT-DINOv3.
Checkpoints are synthetic, written into ``tmp_path`` in the upstream layout."""

import dataclasses
import pickle
import re

import pytest
import torch

import harness
from candidates.videomt import VidEoMT, VidEoMTConfig
from candidates.videomt.convert import infer_config, save_upstream
from candidates.videomt.convert_dinov3 import (
    convert_upstream_dinov3, infer_config_dinov3, is_dinov3_layout, load_upstream_dinov3, read_checkpoint,
    to_upstream_dinov3,
)
from harness import randomize_
from reference.videomt import EOMT_DINOV3_RENAME, hf_eomt_dinov3

CFG = VidEoMTConfig(backbone="dinov3", hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64, patch_size=4,
                    image_size=16, num_register_tokens=2, num_queries=5, num_blocks=2, num_labels=4,
                    num_upscale_blocks=2, key_bias=False, rope_theta=100.0, masked_attention=False)
ARCH = dict(num_heads=2, layer_norm_eps=1e-6, hidden_act="gelu", rope_theta=100.0, image_size=16)
VIT = "backbone.encoder.backbone."


def _model(cfg=CFG) -> VidEoMT:
    model = VidEoMT(cfg).eval()
    randomize_(model, torch.Generator().manual_seed(0))
    return model


def _upstream(model: VidEoMT, **kwargs) -> dict:
    state = to_upstream_dinov3(model.state_dict(), **kwargs)
    state["criterion.empty_weight"] = torch.ones(model.cfg.num_labels + 1)
    return state


def test_videomt_dinov3_layout_has_the_release_keys():
    state = _upstream(_model())
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
    fused = _upstream(_model(), fused_qkv=True)
    assert fused[f"{VIT}blocks.0.attention.qkv_proj.weight"].shape == (96, 32)
    assert torch.equal(fused[f"{VIT}blocks.0.attention.qkv_proj.bias"][32:64], torch.zeros(32))  # upstream's fill
    assert not any(re.search(r"\.[qkv]_proj\.", k) for k in fused)


@pytest.mark.parametrize("fused_qkv", [False, True], ids=["split", "fused"])
def test_videomt_dinov3_infer_config_reads_the_checkpoint(fused_qkv):
    assert infer_config_dinov3(_upstream(_model(), fused_qkv=fused_qkv), **ARCH) == CFG


@pytest.mark.parametrize("missing", ["rope_theta", "image_size", "num_heads"])
def test_videomt_dinov3_infer_config_requires_what_the_checkpoint_cannot_tell(missing):
    arch = {k: v for k, v in ARCH.items() if k != missing}
    with pytest.raises(TypeError, match=missing):
        infer_config_dinov3(_upstream(_model()), **arch)


def test_videomt_dinov3_layouts_are_told_apart():
    with pytest.raises(ValueError, match="this is the DINOv3 release layout .* use candidates.videomt.convert_dinov3"):
        infer_config(_upstream(_model()), num_heads=2, layer_norm_eps=1e-6, hidden_act="gelu")
    dinov2 = {k: v for k, v in _upstream(_model()).items() if "patch_embeddings" not in k}
    missing = r"not a VidEoMT DINOv3 checkpoint: key '.*patch_embeddings.weight' is missing"
    with pytest.raises(ValueError, match=missing):
        infer_config_dinov3(dinov2, **ARCH)
    with pytest.raises(ValueError, match=r"use candidates.videomt.convert.to_upstream"):
        to_upstream_dinov3(VidEoMT(dataclasses.replace(CFG, backbone="dinov2")).state_dict())


def test_videomt_dinov3_rejects_unsupported_releases():
    gated = _upstream(_model())
    gated[f"{VIT}blocks.0.mlp.gate_proj.weight"] = torch.zeros(64, 32)
    with pytest.raises(ValueError, match=r"gated-MLP .* not supported .*blocks.0.mlp.gate_proj.weight"):
        infer_config_dinov3(gated, **ARCH)
    eomt = {f"network.{k[len('backbone.'):]}": v for k, v in _upstream(_model()).items() if k.startswith("backbone.")}
    delta = r"EoMT-DINOv3 release layout \(network\.\*\): its backbone tensors are deltas"
    with pytest.raises(ValueError, match=delta):
        infer_config_dinov3(eomt, **ARCH)
    mixed = _upstream(_model(), fused_qkv=True)
    mixed.update({k: v for k, v in _upstream(_model()).items() if ".blocks.1.attention." in k})
    with pytest.raises(ValueError, match="block 1 has both fused qkv_proj and split q/k/v projections"):
        infer_config_dinov3(mixed, **ARCH)


def test_videomt_dinov3_key_bias_present_in_the_split_form_is_carried():
    cfg = dataclasses.replace(CFG, key_bias=True)
    state = _upstream(_model(cfg))
    assert infer_config_dinov3(state, **ARCH) == cfg
    converted, report = convert_upstream_dinov3(state, cfg)
    assert torch.equal(converted["layers.1.attention.k_proj.bias"], state[f"{VIT}blocks.1.attention.k_proj.bias"])
    assert report.clean


def test_videomt_dinov3_fused_bias_segments_are_split_exactly():
    """q and v segments are carried bit for bit; the all-zero k fill is dropped (exact: adding 0)."""
    state = _upstream(_model(), fused_qkv=True)
    converted, report = convert_upstream_dinov3(state, CFG)
    fused = state[f"{VIT}blocks.2.attention.qkv_proj.bias"]
    assert torch.equal(converted["layers.2.attention.q_proj.bias"], fused[:32])
    assert torch.equal(converted["layers.2.attention.v_proj.bias"], fused[64:])
    assert converted["layers.2.attention.v_proj.bias"].abs().max() > 0.1  # live, not a hidden zero
    assert "layers.2.attention.k_proj.bias" not in converted and report.clean


def test_videomt_dinov3_nonzero_fused_key_bias_is_carried_never_dropped():
    cfg = dataclasses.replace(CFG, key_bias=True)
    state = _upstream(_model(cfg), fused_qkv=True)
    assert infer_config_dinov3(state, **ARCH).key_bias  # a nonzero segment means a key bias
    converted, report = convert_upstream_dinov3(state, cfg)
    fused_k = state[f"{VIT}blocks.0.attention.qkv_proj.bias"][32:64]
    assert torch.equal(converted["layers.0.attention.k_proj.bias"], fused_k)
    assert report.clean
    _, lossy = convert_upstream_dinov3(state, CFG)  # a config without key bias cannot hold it: reported
    assert f"{VIT}blocks.0.attention.qkv_proj.bias[k]" in lossy.unconverted_source and not lossy.clean


def test_videomt_dinov3_report_is_clean_except_the_loss_buffer():
    _, report = convert_upstream_dinov3(_upstream(_model()), CFG)
    assert report.unconverted_source == ["criterion.empty_weight"]
    assert report.missing_target == [] and report.shape_mismatches == [] and report.filled == {}
    assert report.clean


def test_videomt_dinov3_report_lists_unconverted_missing_and_mismatched():
    state = _upstream(_model())
    state[f"{VIT}rope_embeddings.inv_freq"] = torch.ones(4)  # unknown (a non-persistent buffer upstream)
    del state[f"{VIT}blocks.0.layer_scale2.lambda1"]
    state["backbone.query_updater.bias"] = torch.ones(31)
    _, report = convert_upstream_dinov3(state, CFG)
    assert f"{VIT}rope_embeddings.inv_freq" in report.unconverted_source
    assert report.missing_target == ["layers.0.layer_scale2.lambda1"]
    assert report.shape_mismatches == [("query_updater.bias", (31,), (32,))]
    assert not report.clean
    with pytest.raises(ValueError, match="needs a dinov3 config, got backbone='dinov2'"):
        convert_upstream_dinov3(state, dataclasses.replace(CFG, backbone="dinov2"))


@pytest.mark.parametrize("fused_qkv", [False, True], ids=["split", "fused"])
def test_videomt_dinov3_round_trip_is_bitwise(fused_qkv):
    candidate = _model().state_dict()
    back, report = convert_upstream_dinov3(to_upstream_dinov3(candidate, fused_qkv=fused_qkv), CFG)
    assert report.clean and back.keys() == candidate.keys()
    for key in candidate:
        assert torch.equal(back[key], candidate[key]) and back[key].dtype == candidate[key].dtype, key
    upstream = _upstream(_model(), fused_qkv=fused_qkv)
    again = to_upstream_dinov3(convert_upstream_dinov3(upstream, CFG)[0], fused_qkv=fused_qkv)
    assert again.keys() == upstream.keys() - {"criterion.empty_weight"}
    for key in again:  # bitwise: same bytes, signed zeros included
        assert again[key].view(torch.int32).equal(upstream[key].view(torch.int32)), key


@pytest.mark.parametrize("wrapper", ["model", "state_dict", None])
def test_videomt_dinov3_checkpoint_file_loads_to_identical_model(tmp_path, wrapper):
    original = _model()
    state = _upstream(original, fused_qkv=wrapper == "model")
    save_upstream(state if wrapper is None else {wrapper: state, "iteration": torch.tensor(7)}, tmp_path / "v3.pth")
    loaded, report = load_upstream_dinov3(tmp_path / "v3.pth", **ARCH)
    assert report.clean and loaded.cfg == CFG
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    video = torch.randn(1, 3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(original(video), loaded(video)))


def test_videomt_dinov3_load_strict_raises_with_report(tmp_path):
    state = _upstream(_model())
    del state["backbone.class_head.bias"]
    save_upstream(state, tmp_path / "bad.pth")
    expected = r"did not convert cleanly:\n.*\nmissing target keys \(1\): \['class_predictor.bias'\]"
    with pytest.raises(ValueError, match=expected):
        load_upstream_dinov3(tmp_path / "bad.pth", **ARCH)
    _, report = load_upstream_dinov3(tmp_path / "bad.pth", **ARCH, strict=False)
    assert report.missing_target == ["class_predictor.bias"]


class _Payload:
    def __reduce__(self):
        return (print, ("executed",))


def test_videomt_dinov3_load_is_weights_only(tmp_path):
    state = _upstream(_model())
    state["payload"] = _Payload()
    torch.save(state, tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_upstream_dinov3(tmp_path / "evil.pth", **ARCH)
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"expected a state dict .* got list"):
        read_checkpoint(tmp_path / "list.pth")


# transformers' own renaming of this layout: the table of ``convert_eomt_dinov3_to_hf.py``
# (DELTA_KEY_REPLACEMENTS, for EoMT's ``network.`` prefix; VidEoMT's detectron2 prefix is
# ``backbone.``). That script is not installed, so the table is restated here, independent of ours.
_HF_RULES = (
    (r"^backbone\.encoder\.backbone\.patch_embed\.cls_token$", "embeddings.cls_token"),
    (r"^backbone\.encoder\.backbone\.patch_embed\.register_tokens$", "embeddings.register_tokens"),
    (r"^backbone\.encoder\.backbone\.patch_embed\.patch_embeddings\.", "embeddings.patch_embeddings."),
    (r"^backbone\.encoder\.backbone\.blocks\.(\d+)\.", r"layers.\1."),
    (r"^backbone\.encoder\.backbone\.norm\.", "layernorm."),
    (r"^backbone\.q\.", "query."),
    (r"^backbone\.class_head\.", "class_predictor."),
    (r"^backbone\.mask_head\.0\.", "mask_head.fc1."),
    (r"^backbone\.mask_head\.2\.", "mask_head.fc2."),
    (r"^backbone\.mask_head\.4\.", "mask_head.fc3."),
    (r"^backbone\.upscale\.(\d+)\.conv1\.", r"upscale_block.block.\1.conv1."),
    (r"^backbone\.upscale\.(\d+)\.conv2\.", r"upscale_block.block.\1.conv2."),
    (r"^backbone\.upscale\.(\d+)\.norm\.", r"upscale_block.block.\1.layernorm2d."),
    (r"^backbone\.attn_mask_probs$", "attn_mask_probs"),
    (r"^criterion\.", "criterion."),
)


def _hf_state(upstream: dict) -> dict:
    out = {}
    for key, value in upstream.items():
        for pattern, replacement in _HF_RULES:
            if re.match(pattern, key):
                out[re.sub(pattern, replacement, key)] = value
                break
    return out  # query_updater (EoMT has none) is not renamed


def _parity_via_release_file(path, cfg: VidEoMTConfig, masked: bool) -> harness.ParityReport:
    """Write one synthetic release file of ``cfg``; read it with ours into the candidate and with
    transformers' table into ``EomtDinov3ForUniversalSegmentation``; compare at float64."""
    source = _model(cfg)
    with torch.no_grad():
        source.attn_mask_probs.fill_(float(masked))
    save_upstream({"model": _upstream(source)}, path)

    arch = {**ARCH, "num_heads": cfg.num_heads, "image_size": cfg.image_size}
    candidate, report = load_upstream_dinov3(path, **arch)
    assert report.clean and candidate.cfg == cfg
    if masked:  # same weights, EoMT's inference-time masked attention switched on
        converted = candidate.state_dict()
        candidate = VidEoMT(dataclasses.replace(candidate.cfg, masked_attention=True)).eval()
        candidate.load_state_dict(converted)
    reference = hf_eomt_dinov3(dataclasses.replace(cfg, masked_attention=True))
    reference.load_state_dict(_hf_state(read_checkpoint(path)), strict=True)

    x = torch.randn(2, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    keys = ("class_queries_logits", "masks_queries_logits", "last_hidden_state")
    outputs = lambda out: {k: getattr(out, k) for k in keys}  # noqa: E731
    return harness.compare(candidate.double(), reference.double(), x, rename=EOMT_DINOV3_RENAME,
                           reference_call=lambda model, call: model(pixel_values=call.args[0]),
                           candidate_outputs=outputs, reference_outputs=outputs)


@pytest.mark.parity
@pytest.mark.parametrize("masked", [False, True], ids=["videomt_unmasked", "eomt_masked"])
def test_videomt_dinov3_parity_converted_checkpoint_vs_eomt_dinov3(tmp_path, masked):
    """Converted weights compute EoMT-DINOv3's output to 1e-10 at float64, at every layer.
    VidEoMT never masks attention (the file's attn_mask_probs is 0, so EoMT skips it too);
    ``eomt_masked`` runs EoMT's masked query stage (probs 1) on the same converted weights."""
    result = _parity_via_release_file(tmp_path / "release.pth", CFG, masked)
    assert result.passed, result.format()
    assert result.to_dict()["output"]["max_abs"] <= 1e-10
    assert result.first_divergence is None


@pytest.mark.parity
@pytest.mark.nightly
@pytest.mark.parametrize("masked", [False, True], ids=["videomt_unmasked", "eomt_masked"])
def test_videomt_dinov3_parity_converted_checkpoint_vit_small(tmp_path, masked):
    cfg = dataclasses.replace(CFG, hidden_size=384, num_layers=12, num_heads=6, intermediate_size=1536,
                              patch_size=16, image_size=64, num_register_tokens=4, num_queries=20, num_blocks=4,
                              num_labels=40)
    result = _parity_via_release_file(tmp_path / "release.pth", cfg, masked)
    assert result.passed, result.format()
    assert result.to_dict()["output"]["max_abs"] <= 1e-10
