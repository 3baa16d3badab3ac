"""A module of the port's own whose output its caller returns as it is, and whose code left out
its last step: the original applies that step by a module of its own after the layers whose sums
it takes (timm's HRNet: ``fuse_act`` after ``fuse_layers``), the port in its fusion module's code.
The fusion module, whose code lost the step, is named, not the stage around it."""

from __future__ import annotations

import pytest
import torch

import harness
from port_toys import HrPort, hrnet_original

pytest.importorskip("timm")


def _compared(final_relu: bool) -> harness.ParityReport:
    original = hrnet_original().double().eval()
    harness.randomize_(original, torch.Generator().manual_seed(0))
    port = HrPort().double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    weights = harness.map_weights(port, original, x)
    weights.transfer(original, port)
    port.stages[0].fusion.final_relu = final_relu
    return harness.compare(port, original, x, weights=weights)


def test_a_fusion_module_that_lost_its_final_relu_is_named_not_its_stage() -> None:
    report = _compared(final_relu=False)
    assert not report.passed and report.culprit == "stages.0.fusion", \
        f"culprit {report.culprit}: stages.0 returns what stages.0.fusion gives, whose code lost the ReLU\n" \
        f"{report.format()}"
