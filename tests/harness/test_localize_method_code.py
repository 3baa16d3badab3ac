"""A candidate compared through a method of its own (``candidate_call`` running
``forward_features``, as timm's models offer) whose code, outside every submodule, adds a position
table with a row zeroed. No recorded call holds that code, and every twin after it only receives
the error: the model itself is named, not left unlocalized."""

from __future__ import annotations

import copy

import torch
from torch import nn

import harness
from harness.trace import ROOT

D, PATCH = 16, 4


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, D, PATCH, stride=PATCH)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, D))
        self.blocks = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, D), nn.GELU(), nn.LayerNorm(D))
        self.head = nn.Linear(D, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # the model's own code
        return self.blocks(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(1))


def _compared(change) -> harness.ParityReport:
    reference = _Encoder().double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    candidate = copy.deepcopy(reference)
    with torch.no_grad():
        change(candidate)
    image = torch.randn(2, 3, 2 * PATCH, 2 * PATCH, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    features = (lambda model, call: model.forward_features(*call.args))
    return harness.compare(candidate, reference, image, candidate_call=features, reference_call=features)


def test_a_position_row_zeroed_in_the_called_methods_code_names_the_model() -> None:
    report = _compared(lambda model: model.pos_embed[0, 2].zero_())
    assert not report.passed and report.culprit == ROOT, \
        f"culprit {report.culprit}: the error starts in forward_features' own code, which only the model holds\n" \
        f"{report.format()}"


def test_an_honest_copy_called_through_its_method_passes() -> None:
    report = _compared(lambda model: None)
    assert report.passed and report.culprit is None, report.format()
