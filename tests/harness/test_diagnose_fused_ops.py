"""A fused op (``torch.addcmul(b, w, y)``, timm's global response norm) is recorded as the ops a
port writes for it (``w * y + b``): the two sides' ops pair one by one, so what the port left out
after them (the residual) is named, not the fused op it spelled differently."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

import harness
from helpers import compare_port, findings_text

C = 8


class _FusedResponseNorm(nn.Module):
    """The reference's spelling: one addcmul, then the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.zeros(C)), nn.Parameter(torch.zeros(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x / (x.norm(dim=1, keepdim=True) + 1e-6)  # (B, N, C)
        return x + torch.addcmul(self.bias, self.weight, x * n)


class _WrittenResponseNorm(nn.Module):
    """A port's spelling: multiply, add the bias, add the residual (unless ``residual`` is off)."""

    def __init__(self, residual: bool = True) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.zeros(C)), nn.Parameter(torch.zeros(C))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x / (x.norm(dim=1, keepdim=True) + 1e-6)
        y = self.weight * (x * n) + self.bias
        return x + y if self.residual else y


class _Net(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.fc, self.grn = nn.Linear(C, C), norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grn(self.fc(x))


def _compare(candidate_norm: nn.Module, change: Callable[[nn.Module], None] = lambda norm: None) -> harness.Report:
    ref = _Net(_FusedResponseNorm()).double().eval()
    harness.randomize_(ref, torch.Generator().manual_seed(0))
    x = torch.randn(2, 5, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return compare_port(_Net(candidate_norm).double().eval(), ref, x, lambda cand: change(cand.grn))


def test_a_written_out_addcmul_with_its_residual_passes_with_no_finding() -> None:
    report = _compare(_WrittenResponseNorm())
    assert report.passed and report.diagnosis == [], findings_text(report.diagnosis)


def test_a_residual_missing_after_a_written_out_addcmul_is_named_as_the_missing_add() -> None:
    report = _compare(_WrittenResponseNorm(residual=False))
    assert report.culprit == "grn", f"culprit {report.culprit!r}, expected 'grn'"
    first = report.diagnosis[0]
    assert (first["kind"], first["op"]) == ("missing_op", "add"), findings_text(report.diagnosis)
    assert "residual" in first["text"], findings_text(report.diagnosis)


def test_a_weight_element_off_in_a_written_out_addcmul_names_the_weight() -> None:
    report = _compare(_WrittenResponseNorm(), lambda norm: norm.weight[3].add_(0.05))
    assert report.diagnosis[0]["text"] == (
        "grn: mul operand weight holds other values than the reference's weight (max_abs difference 5.000e-02)"), \
        findings_text(report.diagnosis)
