"""Adapters compose: a fused ``qkv`` whose rows the weight map regroups per head (``(heads, 3,
head_dim)`` against ``(3, heads, head_dim)``), run on windows folded into the batch (or on the map
before it is cut) where its twin keeps the windows as dims, holds its twin's values through the
regroup of its features and then the window layout, neither alone."""

from __future__ import annotations

import pytest
import torch

import harness
from harness.adapters import Adapter, then_layout
from helpers import transferred
from port_toys import WindowsAsDims, WindowsInBatch, channels_last_maps, randomized

LAYOUTS = {"windows folded into the batch": False, "the map before it is cut": True}


@pytest.fixture(params=list(LAYOUTS), ids=list(LAYOUTS))
def port(request):
    on_map = LAYOUTS[request.param]
    return transferred(randomized(WindowsInBatch(on_map), 1), randomized(WindowsAsDims(), 2), channels_last_maps())


def _qkv_row(report):
    return next(r for r in report.rows if r.candidate == "qkv")


def test_a_per_head_qkv_run_on_windows_in_another_layout_is_verified(port):
    _, _, weights = port
    assert weights.verified, f"a correct port's map is not verified:\n{weights}"


def test_a_per_head_qkv_run_on_windows_in_another_layout_passes(port):
    candidate, reference, weights = port
    report = harness.compare(candidate, reference, channels_last_maps(), weights=weights)
    assert report.passed, report.format()


def test_a_per_head_qkv_on_windows_is_compared_regrouped_then_in_its_twins_layout(port):
    candidate, reference, weights = port
    row = _qkv_row(harness.compare(candidate, reference, channels_last_maps(), weights=weights))
    assert row.passed and row.adapter.startswith("features regrouped (2, 3, 8) -> (3, 2, 8)") \
        and ", then " in row.adapter, f"qkv compared through {row.adapter!r} (passed: {row.passed})"


def test_a_bias_error_in_a_per_head_qkv_on_windows_is_blamed_on_it(port):
    candidate, reference, weights = port
    with torch.no_grad():
        candidate.qkv.bias[5] += 1e-3
    report = harness.compare(candidate, reference, channels_last_maps(), weights=weights)
    assert (report.passed, report.culprit) == (False, "qkv"), report.format()


def test_a_feature_regroup_then_a_window_fold_gives_the_twins_tensor():
    windows = torch.randn(4, 16, 2, 3, 8, dtype=torch.float64)         # (B*nW, ws*ws, heads, 3, hd)
    twin = windows.transpose(2, 3).reshape(1, 2, 2, 4, 4, 48)           # (B, nh, nw, ws, ws, (3, heads, hd))
    regroup = Adapter("(2, 3, 8) -> (3, 2, 8)", lambda t: t.reshape(4, 16, 2, 3, 8).transpose(2, 3).reshape(4, 16, 48))
    composed = then_layout(regroup, windows.reshape(4, 16, 48), twin)
    assert composed is not None and torch.equal(composed.apply(windows.reshape(4, 16, 48)), twin), \
        f"composed adapter: {composed and composed.description!r}"


def test_an_adapter_whose_result_no_layout_fits_stays_alone_leaving_the_shapes_apart():
    halves = Adapter("first half", lambda t: t[..., :24])
    assert then_layout(halves, torch.zeros(4, 16, 48), torch.zeros(1, 2, 2, 4, 4, 48)) is halves
