"""A dropout passes its input through in eval mode: its ``p`` is no finding there (as a batch norm's
momentum), and one in training mode."""

from __future__ import annotations

from torch import nn

from harness.diagnose import attribute_diff


def _twins() -> tuple[nn.Module, nn.Module]:
    return nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)), nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0))


def test_dropout_p_differing_between_twins_in_eval_mode_is_no_finding() -> None:
    cand, ref = _twins()
    assert attribute_diff(cand.eval(), ref.eval(), "block") == []


def test_dropout_p_differing_between_twins_in_training_mode_is_a_finding() -> None:
    cand, ref = _twins()
    assert [f["argument"] for f in attribute_diff(cand.train(), ref.train(), "block")] == ["p"]
