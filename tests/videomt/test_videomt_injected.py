"""Injected bugs: each is caught by the parity harness and localized to the module that has it.

1. A conversion that drops the key bias (a real conversion bug): culprit ``layers.0.attention.k_proj``.
2. Queries propagated from the wrong frame (frame 2 built from frame 0's output queries):
   a. inside the propagation module (``QueryPropagation``, the model's ``query_updater``), which
      keeps updating the first frame's queries: frames 0 and 1 pass and the culprit is
      ``query_updater`` itself, since its inputs equal the reference's;
   b. in the caller, the frame loop handing it the wrong frame's queries: the updater is right on
      the reference's inputs (re-run), so the error is the loop's, i.e. the root's forward.
3. Layer scales swapped inside one block: culprit ``layers.1.layer_scale1``.
"""

import pytest
import torch
from helpers import swap_values_

import harness
from candidates.videomt import VidEoMT
from candidates.videomt.convert import convert_upstream, to_upstream


def _rows(report) -> dict[str, dict]:
    return {f"{r['candidate']}#{r['call']}": r for r in report.to_dict()["layers"]}


def _caught(candidate, *, first_divergence: str, culprit: str) -> dict[str, dict]:
    """The ``videomt`` pair's rows for a candidate with an injected bug, which must fail there."""
    report = harness.compare_pair("videomt", candidate=candidate)
    assert not report.passed, "the injected bug went unnoticed"
    assert (report.first_divergence, report.culprit) == (first_divergence, culprit), report.format()
    return _rows(report)


def _convert_dropping_key_bias(upstream: dict, config) -> dict:
    """The buggy conversion: q/v biases split out of qkv, the k bias left at its init value."""
    state, _ = convert_upstream(upstream, config)
    fresh = VidEoMT(config).state_dict()
    return {k: (fresh[k] if k.endswith("attention.k_proj.bias") else v) for k, v in state.items()}


@pytest.mark.parity
def test_videomt_parity_catches_dropped_key_bias_in_conversion():
    pair = harness.get_pair("videomt")
    candidate, _ = pair.build(dtype=torch.float64)
    upstream = to_upstream(candidate.state_dict())  # the release layout of the reference's weights

    good = VidEoMT(candidate.config)
    good.load_state_dict(convert_upstream(upstream, candidate.config)[0] | {
        "embeddings.mask_token": candidate.embeddings.mask_token.detach()})
    assert harness.compare_pair("videomt", candidate=good.double().eval()).passed  # control

    bad = VidEoMT(candidate.config)
    bad.load_state_dict(_convert_dropping_key_bias(upstream, candidate.config) | {
        "embeddings.mask_token": candidate.embeddings.mask_token.detach()})
    _caught(bad.double().eval(), first_divergence="layers.0.attention.k_proj", culprit="layers.0.attention.k_proj")


@pytest.mark.parity
def test_videomt_parity_localizes_wrong_frame_in_query_propagation():
    pair = harness.get_pair("videomt")  # 3 frames: frame 2 must use frame 1's queries
    candidate, _ = pair.build(dtype=torch.float64)
    propagation = candidate.query_updater
    update = propagation.forward
    first_frame: list[torch.Tensor] = []

    def stale(previous):  # the bug: remembers frame 0's output queries and propagates them forever
        if not first_frame:
            first_frame.append(previous)
        return update(first_frame[0])

    propagation.forward = stale
    rows = _caught(candidate, first_divergence="query_updater", culprit="query_updater")
    assert rows["query_updater#1"]["status"] == "introduced" and not rows["query_updater#1"]["passed"]
    assert rows["<root>#0"]["status"] == "contains"
    assert rows["query_updater#0"]["passed"] and rows["layers.2#1"]["passed"]  # frames 0 and 1 intact
    assert all(not rows[f"{m}#2"]["passed"] for m in ("layers.1", "layers.2", "layernorm", "class_predictor"))
    assert rows["layers.1#2"]["status"] == "propagated"  # received the error, re-run on the reference's inputs

    propagation.forward = update  # control: the same model without the bug passes
    assert harness.compare_pair("videomt", candidate=candidate).passed


@pytest.mark.parity
def test_videomt_parity_blames_the_frame_loop_for_feeding_the_wrong_frame():
    pair = harness.get_pair("videomt")  # 3 frames: frame 2 must use frame 1's queries
    candidate, _ = pair.build(dtype=torch.float64)
    query_stage = candidate._query_stage
    first_frame: list[torch.Tensor] = []

    def stale(x, rope):  # every frame propagates frame 0's output queries
        out, hidden = query_stage(x, rope)
        if not first_frame:
            first_frame.append(hidden)
        return out, first_frame[0]

    candidate._query_stage = stale
    # The frame loop is the model's own forward: the updater runs correctly on the reference's
    # inputs (re-run), so the error is the root's, fed into query_updater#1.
    rows = _caught(candidate, first_divergence="query_updater", culprit="<root>")
    assert not rows["query_updater#1"]["passed"]  # the update feeding frame 2 ...
    assert rows["query_updater#1"]["reran"] and rows["query_updater#1"]["status"] == "propagated"  # ... is right
    assert rows["query_updater#0"]["passed"] and rows["layers.2#1"]["passed"]  # frames 0 and 1 intact
    assert not rows["layers.1#2"]["passed"]


@pytest.mark.parity
def test_videomt_parity_catches_layer_scale_swap():
    pair = harness.get_pair("videomt")
    candidate, _ = pair.build(dtype=torch.float64)
    swap_values_(candidate.layers[1].layer_scale1.lambda1, candidate.layers[1].layer_scale2.lambda1)
    rows = _caught(candidate, first_divergence="layers.1.layer_scale1", culprit="layers.1.layer_scale1")
    assert rows["layers.0#0"]["passed"]
