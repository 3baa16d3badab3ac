"""A module of the port's own whose output its caller returns as it is, and whose code left out
its last step: the original applies that step by a module of its own after the layers whose sums
it takes (timm's HRNet: ``fuse_act`` after ``fuse_layers``), the port in its fusion module's code.
The fusion module, whose code lost the step, is named, not the stage around it."""

from __future__ import annotations

import pytest
import torch

import harness
from helpers import compare_port, seeded
from port_toys import HrPort, hrnet_original

pytest.importorskip("timm")


def _compared(final_relu: bool) -> harness.ParityReport:
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return compare_port(HrPort().double().eval(), seeded(hrnet_original(), 0), x,
                        lambda port: setattr(port.stages[0].fusion, "final_relu", final_relu))


def test_a_fusion_module_that_lost_its_final_relu_is_named_not_its_stage() -> None:
    report = _compared(final_relu=False)
    assert not report.passed and report.culprit == "stages.0.fusion", \
        f"culprit {report.culprit}: stages.0 returns what stages.0.fusion gives, whose code lost the ReLU\n" \
        f"{report.format()}"
