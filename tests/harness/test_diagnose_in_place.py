"""An in-place activation diagnosed at float64: the re-run works on copies of the recorded inputs
even where the dtype is theirs, so the reference's ``relu_`` neither writes into the trace nor into
what its twin (an ``Identity``, a ``ReLU6``) returned, and the two streams still differ where the
port does."""

from __future__ import annotations

import torch
from torch import nn

import harness


class _Features(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def _compare(activation: nn.Module, scale: float = 1.0) -> harness.Report:
    reference = _Features().double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    candidate = _Features().double().eval()
    candidate.load_state_dict(reference.state_dict())
    candidate.features[5] = activation
    x = scale * torch.randn(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return harness.compare(candidate, reference, x)


def _texts(report: harness.Report) -> list[str]:
    return [finding["text"] for finding in report.diagnosis]


def test_an_identity_where_the_reference_applies_an_in_place_relu_reads_as_the_relu_missing():
    report = _compare(nn.Identity())
    assert (report.culprit, report.diagnosis[:1] and report.diagnosis[0]["kind"]) == ("features.5", "missing_op") \
        and "relu missing" in report.diagnosis[0]["text"], _texts(report)


def test_an_in_place_relu6_where_the_reference_applies_an_in_place_relu_reads_as_the_other_activation():
    report = _compare(nn.ReLU6(inplace=True), scale=50.0)  # features beyond 6, where the two differ
    assert report.diagnosis and "hardtanh where the reference applies relu" in report.diagnosis[0]["text"], \
        _texts(report)


def test_the_diagnosis_leaves_the_recorded_inputs_of_an_in_place_activation_as_recorded():
    report = _compare(nn.Identity())
    row = next(r for r in report.rows if r.candidate == "features.5")
    recorded = row.match.reference.inputs["args.0"]
    assert recorded.min() < 0, (f"features.5's recorded input has min {recorded.min():.3g}: the re-run's relu_ "
                                "wrote into the trace")
