"""Summary mode, a port running both frames through its encoder in one batched call where the
original calls it once per frame: the batched call's statistics are compared with those of the
original's calls joined along the batch dim, so an error inside the encoder is named there."""

import copy

import pytest
import torch
import torch.nn as nn

import harness
from harness.align import Alignment, Match, batched_twins
from harness.pairs import randomize_
from harness.trace import Record, TensorSummary


def encoder():
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())


class PerFrame(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.head = encoder(), nn.Conv2d(16, 2, 1)

    def forward(self, a, b):
        return self.head(torch.cat([self.enc(a), self.enc(b)], 1))


class Batched(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.out = encoder(), nn.Conv2d(16, 2, 1)

    def forward(self, a, b):
        fa, fb = self.backbone(torch.cat([a, b], 0)).chunk(2, 0)
        return self.out(torch.cat([fa, fb], 1))


@pytest.fixture(scope="module")
def mapped():
    reference = PerFrame().double().eval()
    randomize_(reference, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    candidate = Batched().double().eval()
    g = torch.Generator().manual_seed(1)
    x = tuple(torch.randn(1, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(2))
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    return candidate, reference, x, weights


def test_summary_mode_passes_a_correct_batched_port(mapped):
    candidate, reference, x, weights = mapped
    report = harness.compare(candidate, reference, x, weights=weights, mode="summary")
    assert report.passed, report.format()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_summary_mode_blames_the_norm_inside_the_batched_encoder(mapped, dtype):
    candidate, reference, x, weights = mapped
    candidate, reference = copy.deepcopy(candidate).to(dtype), copy.deepcopy(reference).to(dtype)
    candidate.backbone[4].eps = 1e-1
    report = harness.compare(candidate, reference, tuple(t.to(dtype) for t in x), weights=weights, mode="summary")
    assert not report.passed and report.culprit == "backbone.4", \
        f"culprit {report.culprit!r}, expected 'backbone.4'\n{report.format()}"


def summary_record(name, call, t):
    return Record(name=name, call=call, start=call, end=call, inputs={"0": TensorSummary.of(t)},
                  outputs={"": TensorSummary.of(t * 2)})


def test_joined_statistics_are_those_of_the_concatenated_calls():
    g = torch.Generator().manual_seed(0)
    frames = [torch.randn(1, 4, 5, generator=g, dtype=torch.float64) * s + s for s in (1.0, 3.0)]
    refs = [summary_record("enc", i, t) for i, t in enumerate(frames)]
    cand = summary_record("backbone", 0, torch.cat(frames))
    aligned = batched_twins(Alignment([Match(cand, refs[0], "weights")], [], [refs[1]], [], []), refs)
    joined, expected = aligned.matches[0].reference.primary, TensorSummary.of(torch.cat(frames) * 2)
    assert joined.shape == expected.shape and joined.absmax == expected.absmax
    assert joined.mean == pytest.approx(expected.mean, rel=1e-12), f"mean {joined.mean}, expected {expected.mean}"
    assert joined.std == pytest.approx(expected.std, rel=1e-12), f"std {joined.std}, expected {expected.std}"
    assert aligned.unmatched_reference == [], "the second frame's call is compared, not left unmatched"
