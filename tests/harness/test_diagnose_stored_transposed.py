"""A weight whose values are the reference's with its dims permuted (a square linear weight stored
``.t()``, a kernel with H and W exchanged: a conversion that added or dropped a transpose) is named
as such, not as other values."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import compare_port, findings_text


def _report(model: nn.Module, x: torch.Tensor, permute: tuple[int, ...], name: str) -> harness.Report:
    reference = model.double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    candidate = type(model)().double().eval()

    def transpose(port: nn.Module) -> None:
        weight = port.get_parameter(name)
        weight.copy_(weight.permute(permute).contiguous())

    return compare_port(candidate, reference, x, transpose)


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.proj = nn.Linear(6, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.fc1(x)))


class _Convs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


def test_a_square_linear_weight_stored_transposed_is_named_transposed() -> None:
    x = torch.randn(2, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = _report(_Mlp(), x, (1, 0), "proj.weight")
    assert report.culprit == "proj" and report.diagnosis[0]["text"] == (
        "proj: linear operand weight holds the reference's weight with its dims permuted (1, 0) (stored transposed?)"), \
        findings_text(report.diagnosis)


def test_a_kernel_with_its_height_and_width_exchanged_is_named_permuted() -> None:
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = _report(_Convs(), x, (0, 1, 3, 2), "conv2.weight")
    assert report.culprit == "conv2" and report.diagnosis[0]["text"] == (
        "conv2: conv2d operand weight holds the reference's weight with its dims permuted (0, 1, 3, 2) "
        "(stored transposed?)"), findings_text(report.diagnosis)
