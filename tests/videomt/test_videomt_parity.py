"""Layer-by-layer parity of VidEoMT against transformers' Videomt (2 and 3 frames) and EoMT-DINOv3."""

import pytest
import torch

import harness

DTYPES = [torch.float32, torch.float64]


@pytest.mark.parity
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", ["videomt", "videomt_2frames", "eomt_dinov3"])
def test_videomt_parity(parity_check, name, dtype):
    report = parity_check(name, dtype=dtype)
    if dtype == torch.float64:
        assert report.to_dict()["output"]["max_abs"] <= 1e-10
    # Nothing of ours goes untraced: every candidate call found its reference twin except the
    # DINOv3 patch wrapper (upstream embeds with a bare conv, matched as its .projection).
    allowed = {"embeddings.patch_embed#0"} if name == "eomt_dinov3" else set()
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


@pytest.mark.parity
@pytest.mark.nightly
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", ["videomt_small", "eomt_dinov3_small"])
def test_videomt_parity_vit_small(parity_check, name, dtype):
    report = parity_check(name, dtype=dtype)
    if dtype == torch.float64:
        assert report.to_dict()["output"]["max_abs"] <= 1e-10
