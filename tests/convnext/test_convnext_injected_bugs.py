"""Injected bugs: one change inside one ConvNeXt block must be found and blamed on that block.

Each test takes the candidate of the ``convnext_tiny`` pair (float64, weights identical to timm's),
changes one thing inside ``stages.1.blocks.1`` and hands it to ``harness.compare_pair``, which
pairs it with a freshly built reference. The report must fail, its first divergence must lie in
that block, and its culprit must be the module that makes the error: the modified submodule when
the change lives in one (norm eps, GELU approximation), the block itself when it lives in the
block's own forward (layer scale ``gamma``, the residual).
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import inject_forward
from torch import Tensor, nn

import harness

PAIR = "convnext_tiny"
BLOCK = "stages.1.blocks.1"


@pytest.fixture(scope="module")
def pristine() -> nn.Module:
    candidate, _ = harness.get_pair(PAIR).build(dtype=torch.float64)
    return candidate


@pytest.fixture
def candidate(pristine: nn.Module) -> nn.Module:
    return copy.deepcopy(pristine)


def block_of(model: nn.Module) -> nn.Module:
    return model.get_submodule(BLOCK)


def in_block(name: str | None) -> bool:
    return name is not None and (name == BLOCK or name.startswith(BLOCK + "."))


def assert_blamed(report: harness.ParityReport, culprit: str) -> None:
    assert not report.passed, report.format()
    assert in_block(report.first_divergence), report.format()
    assert report.culprit == culprit, report.format()
    before = [r for r in report.rows if r.candidate.startswith(("stem", "stages.0.", "stages.1.downsample",
                                                                "stages.1.blocks.0."))]
    assert before and all(r.passed for r in before)  # nothing upstream of the block is blamed
    assert not report.rows[-1].passed  # the error reaches the logits


def test_unmodified_candidate_passes(candidate: nn.Module) -> None:
    report = harness.compare_pair(PAIR, candidate=candidate, dtype=torch.float64)
    assert report.passed and report.first_divergence is None and report.culprit is None, report.format()


def test_norm_eps_change_blames_the_norm(candidate: nn.Module) -> None:
    block_of(candidate).norm.eps = 1e-3  # timm: 1e-6
    report = harness.compare_pair(PAIR, candidate=candidate, dtype=torch.float64)
    assert_blamed(report, f"{BLOCK}.norm")
    assert report.first_divergence == f"{BLOCK}.norm"


def test_tanh_gelu_blames_the_activation(candidate: nn.Module) -> None:
    block_of(candidate).mlp.act.approximate = "tanh"  # timm: exact erf GELU
    report = harness.compare_pair(PAIR, candidate=candidate, dtype=torch.float64)
    assert_blamed(report, f"{BLOCK}.mlp.act")
    assert report.first_divergence == f"{BLOCK}.mlp.act"


def test_layer_scale_change_blames_the_block(candidate: nn.Module) -> None:
    with torch.no_grad():
        block_of(candidate).gamma[7] += 0.05  # one channel's layer scale
    report = harness.compare_pair(PAIR, candidate=candidate, dtype=torch.float64)
    assert_blamed(report, BLOCK)  # gamma is the block's own parameter, used in its forward


def test_dropped_residual_blames_the_block(candidate: nn.Module) -> None:
    def forward_without_residual(self: nn.Module, x: Tensor) -> Tensor:
        x = self.conv_dw(x)
        x = x.permute(0, 2, 3, 1)
        x = self.mlp(self.norm(x))
        x = x.permute(0, 3, 1, 2)
        return self.drop_path(x * self.gamma.view(1, -1, 1, 1))  # bug: "+ shortcut" missing

    block = block_of(candidate)
    inject_forward(block, forward_without_residual)
    report = harness.compare_pair(PAIR, candidate=candidate, dtype=torch.float64)
    assert_blamed(report, BLOCK)
    assert report.first_divergence == BLOCK  # every submodule of the block still agrees
