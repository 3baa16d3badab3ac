"""Summary mode keeps statistics, not the calls' inputs, so no operation is re-run; the models still
hold their modules' settings, so an origin that differs from its twin in one (an eps) is explained
by it, and one that differs in none gets no finding."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

import harness


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).double().eval()


def _summary_diagnosis(change: Callable[[nn.Module], None]) -> harness.Report:
    reference = _net()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    candidate = _net()
    candidate.load_state_dict(reference.state_dict())
    with torch.no_grad():
        change(candidate)
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return harness.compare(candidate, reference, x, mode="summary")


def test_a_norm_eps_changed_is_named_in_summary_mode():
    report = _summary_diagnosis(lambda model: setattr(model[4], "eps", 1e-3))
    assert (report.culprit, [f["text"] for f in report.diagnosis]) == (
        "4", ["4: BatchNorm2d.eps 0.001 in the candidate, 1e-05 in the reference"]), report.format()


def test_a_weight_changed_gets_no_settings_finding_in_summary_mode():
    report = _summary_diagnosis(lambda model: model[3].weight.mul_(1.01))
    assert (report.culprit, report.diagnosis) == ("3", []), report.format()
