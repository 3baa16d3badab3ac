"""Every registered default-suite pair trains like its reference: at float64 its gradients (per
parameter, through the weight map, and per aligned module) agree within 1e-10 relative.

The default suite runs the smallest pair of each family; the other default-suite pairs run with
the nightly ones (``--nightly``)."""

from __future__ import annotations

import pytest
import torch

import harness
from backward_toys import GeluWrongBackward

# the smallest pair of each family: a few seconds each
QUICK = {
    "convnext_tiny_stage3_block", "dinov3_projector", "dinov3_vit_timm", "eomt_dinov3", "mamba_mixer",
    "mformer_v1_sm_tiny", "rope_mixed_vit_small_d2", "videomt",
}
RELATIVE = 1e-10


def _pairs() -> list:
    names = [n for n in harness.list_pairs() if "nightly" not in harness.get_pair(n).tags]
    return [pytest.param(n, marks=() if n in QUICK else pytest.mark.nightly) for n in names]


def test_every_family_has_a_quick_backward_pair():
    families = {n.split("_")[0] for n in harness.list_pairs()}
    covered = {n.split("_")[0] for n in QUICK if n in harness.list_pairs()}
    assert families == covered, f"families without a backward check in the default suite: {families - covered}"


@pytest.mark.parametrize("pair", _pairs())
def test_pair_gradients_agree_at_float64(parity_check, pair):
    report = parity_check(pair, dtype=torch.float64, backward=True)
    backward = report.backward
    assert backward.parameters, f"{pair}: no parameter gradient was compared"
    worst = backward.worst_parameter
    assert worst.metrics.rel_l2 <= RELATIVE, (
        f"{pair}: gradient of {worst.candidate} differs by rel_l2 {worst.metrics.rel_l2:.3g} > {RELATIVE:g}")
    for row in backward.rows:
        for what, m in (("output", row.output_grad), ("input", row.input_grad)):
            assert m is None or m.rel_l2 <= RELATIVE, (
                f"{pair}: {row.key} gradient w.r.t. its {what} differs by rel_l2 {m.rel_l2:.3g} > {RELATIVE:g}")


def test_wrong_backward_in_a_port_is_blamed_on_its_module_in_every_frame():
    candidate, _ = harness.get_pair("videomt").build(dtype=torch.float64)
    candidate.layers[1].mlp.act = GeluWrongBackward().eval()
    report = harness.compare_pair("videomt", candidate=candidate, dtype=torch.float64, backward=True)
    assert report.culprit is None, "the forward must agree: the bug is in the backward only"
    assert report.backward.introduced == ["layers.1.mlp.act"], report.format()


def test_detached_residual_in_a_port_is_blamed_on_its_layer():
    candidate, _ = harness.get_pair("eomt_dinov3").build(dtype=torch.float64)
    layer = candidate.layers[0]
    original = layer.forward

    def forward(x, attention_mask=None, position_embeddings=None):
        out = original(x, attention_mask, position_embeddings)
        return out - x + x.detach()  # the same values up to rounding; no gradient along the residual

    layer.forward = forward
    report = harness.compare_pair("eomt_dinov3", candidate=candidate, dtype=torch.float64, backward=True)
    assert report.backward.culprit == "layers.0", report.format()
