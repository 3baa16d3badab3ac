"""Layer-by-layer parity of VidEoMT against transformers' Videomt (2 and 3 frames) and EoMT-DINOv3,
and of a DINOv3 release file read by ours against the same file read by transformers' own renaming."""

import dataclasses

import pytest
import torch
from helpers import PARITY_DTYPES

import harness
from candidates.videomt import VidEoMT, VidEoMTConfig, videomt_dinov3_small_config, videomt_dinov3_tiny_config
from candidates.videomt.convert import (
    EOMT_DINOV3_RENAME, load_upstream_dinov3, read_checkpoint, save_upstream, to_upstream_dinov3,
)
from harness import randomize_
from harness.keymap import KeyTable, Rule
from reference.videomt import hf_eomt_dinov3

NIGHTLY = pytest.mark.nightly
VIT = "backbone.encoder.backbone."


@pytest.mark.parity
@pytest.mark.parametrize("dtype", PARITY_DTYPES)
@pytest.mark.parametrize("name", ["videomt", "videomt_2frames", "eomt_dinov3",
                                  pytest.param("videomt_small", marks=NIGHTLY),
                                  pytest.param("eomt_dinov3_small", marks=NIGHTLY)])
def test_videomt_parity(parity_check, name, dtype):
    report = parity_check(name, dtype=dtype)
    if dtype == torch.float64:
        assert report.to_dict()["output"]["max_abs"] <= 1e-10
    # Nothing of ours goes untraced: every candidate call found its reference twin except the
    # DINOv3 patch wrapper (upstream embeds with a bare conv, matched as its .projection).
    allowed = {"embeddings.patch_embed#0"} if name.startswith("eomt_dinov3") else set()
    assert set(report.to_dict()["unmatched"]["candidate"]) <= allowed


@pytest.mark.parity
@pytest.mark.parametrize("name, frames", [("videomt", 3), ("videomt_2frames", 2)])
def test_videomt_parity_traces_every_frame(name, frames):
    """The query stage, the final norm and the heads get one compared row per frame; the
    updater one per frame after the first; the pre-query layers one row for the flat batch."""
    rows = harness.compare_pair(name, dtype=torch.float64).to_dict()["layers"]
    calls: dict[str, set[int]] = {}
    for row in rows:
        calls.setdefault(row["candidate"], set()).add(row["call"])
    assert calls["layers.0"] == {0}
    assert calls["layers.2"] == calls["layers.1"] == calls["layernorm"] == set(range(frames))
    assert calls["class_predictor"] == set(range(frames))
    assert calls["query_updater"] == set(range(frames - 1))
    assert all(row["passed"] for row in rows)


# transformers' own renaming of the DINOv3 release: the table of ``convert_eomt_dinov3_to_hf.py``
# (DELTA_KEY_REPLACEMENTS, for EoMT's ``network.`` prefix; VidEoMT's detectron2 prefix is
# ``backbone.``). That script is not installed, so the table is restated here, independent of ours:
# a mistake our release table makes both ways cancels in a round trip, but not against this one.
TRANSFORMERS_RENAMING = KeyTable(
    Rule(VIT + "patch_embed.cls_token", "embeddings.cls_token"),
    Rule(VIT + "patch_embed.register_tokens", "embeddings.register_tokens"),
    Rule(VIT + "patch_embed.patch_embeddings.", "embeddings.patch_embeddings."),
    Rule(VIT + "blocks.{i}.", "layers.{i}."),
    Rule(VIT + "norm.", "layernorm."),
    Rule("backbone.q.", "query."),
    Rule("backbone.class_head.", "class_predictor."),
    Rule("backbone.mask_head.0.", "mask_head.fc1."),
    Rule("backbone.mask_head.2.", "mask_head.fc2."),
    Rule("backbone.mask_head.4.", "mask_head.fc3."),
    Rule("backbone.upscale.{i}.conv1.", "upscale_block.block.{i}.conv1."),
    Rule("backbone.upscale.{i}.conv2.", "upscale_block.block.{i}.conv2."),
    Rule("backbone.upscale.{i}.norm.", "upscale_block.block.{i}.layernorm2d."),
    Rule("backbone.attn_mask_probs", "attn_mask_probs"),
    Rule("criterion.", "criterion."),
    Rule("backbone.query_updater.", None),  # EoMT has none
    name="transformers' EoMT-DINOv3 renaming",
)
DINOV3_ARCH = dict(layer_norm_eps=1e-6, hidden_act="gelu", rope_theta=100.0)


def _parity_via_release_file(path, config: VidEoMTConfig, masked: bool) -> harness.ParityReport:
    """Write one synthetic release file of ``config``; read it with ours into the candidate and with
    transformers' renaming into ``EomtDinov3ForUniversalSegmentation``; compare at float64."""
    source = VidEoMT(config).eval()
    randomize_(source, torch.Generator().manual_seed(0))
    with torch.no_grad():
        source.attn_mask_probs.fill_(float(masked))
    release = {**to_upstream_dinov3(source.state_dict()), "criterion.empty_weight": torch.ones(config.num_labels + 1)}
    save_upstream({"model": release}, path)

    candidate, report = load_upstream_dinov3(path, num_heads=config.num_heads, image_size=config.image_size,
                                             **DINOV3_ARCH)
    assert report.clean and candidate.config == config
    if masked:  # same weights, EoMT's inference-time masked attention switched on
        converted = candidate.state_dict()
        candidate = VidEoMT(dataclasses.replace(candidate.config, masked_attention=True)).eval()
        candidate.load_state_dict(converted)
    reference = hf_eomt_dinov3(dataclasses.replace(config, masked_attention=True))
    reference.load_state_dict(TRANSFORMERS_RENAMING.to_candidate(read_checkpoint(path)), strict=True)

    x = torch.randn(2, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    keys = ("class_queries_logits", "masks_queries_logits", "last_hidden_state")
    outputs = lambda out: {k: getattr(out, k) for k in keys}  # noqa: E731
    return harness.compare(candidate.double(), reference.double(), x, rename=EOMT_DINOV3_RENAME,
                           reference_call=lambda model, call: model(pixel_values=call.args[0]),
                           candidate_outputs=outputs, reference_outputs=outputs)


_TINY = videomt_dinov3_tiny_config(masked_attention=False)
_SMALL = videomt_dinov3_small_config(masked_attention=False, image_size=64)


@pytest.mark.parity
@pytest.mark.parametrize("config", [_TINY, pytest.param(_SMALL, marks=NIGHTLY)], ids=["tiny", "vit_small"])
@pytest.mark.parametrize("masked", [False, True], ids=["videomt_unmasked", "eomt_masked"])
def test_videomt_dinov3_release_file_computes_eomt_dinov3(tmp_path, config, masked):
    """Converted weights compute EoMT-DINOv3's output to 1e-10 at float64, at every layer.
    VidEoMT never masks attention (the file's attn_mask_probs is 0, so EoMT skips it too);
    ``eomt_masked`` runs EoMT's masked query stage (probs 1) on the same converted weights."""
    result = _parity_via_release_file(tmp_path / "release.pth", config, masked)
    assert result.passed, result.format()
    assert result.to_dict()["output"]["max_abs"] <= 1e-10
    assert result.first_divergence is None
