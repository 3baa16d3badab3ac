"""An activation the candidate runs before a module, where the reference runs it inside that module
after its own op (a ReLU before the batch norm where the reference's norm applies it after), is an op
applied in another place: the why says where each side applies it, not that it is missing."""

from __future__ import annotations

import torch
from torch import nn

import harness
from port_toys import NormAct

C = 4


class _Reference(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.norm1, self.conv1 = nn.Conv2d(C, C, 3, padding=1), NormAct(C, nn.ReLU()), nn.Conv2d(C, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.norm1(self.conv0(x)))


class _ReluFirst(nn.Module):
    """The port: its ReLU runs before the norm (relu -> norm -> conv, not norm -> relu -> conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.norm1, self.relu1 = nn.Conv2d(C, C, 3, padding=1), nn.BatchNorm2d(C), nn.ReLU()
        self.conv1 = nn.Conv2d(C, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.norm1(self.relu1(self.conv0(x))))


def _report():
    torch.manual_seed(0)
    reference, candidate = _Reference().double().eval(), _ReluFirst().double().eval()
    with torch.no_grad():
        reference.norm1.running_mean.normal_(0, 0.3)  # statistics that make the order matter
    candidate.load_state_dict(reference.state_dict())
    return harness.compare(candidate, reference, torch.randn(2, C, 6, 6, dtype=torch.float64))


def test_an_activation_run_before_the_norm_is_said_to_be_applied_before_it():
    report = _report()
    why = report.diagnosis[0]["text"] if report.diagnosis else "(no diagnosis)"
    assert report.culprit == "norm1", f"culprit {report.culprit}, expected norm1\n{report.format()}"
    assert "relu applied in another place than the reference's: the candidate applies it before the module" in why \
        and "after the module's last operation (batch_norm)" in why, f"why: {why}"


def test_an_activation_run_before_the_norm_is_not_called_missing():
    report = _report()
    why = report.diagnosis[0]["text"] if report.diagnosis else "(no diagnosis)"
    assert "missing" not in why, f"why calls the moved relu missing: {why}"


class _NormThenAct(nn.Module):
    """A norm and its activation as two submodules."""

    def __init__(self) -> None:
        super().__init__()
        self.bn, self.act = nn.BatchNorm2d(C), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.norm, self.conv1 = nn.Conv2d(C, C, 3, padding=1), _NormThenAct(), nn.Conv2d(C, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.norm(self.conv0(x)))


class _ReluModuleFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.norm, self.relu = nn.Conv2d(C, C, 3, padding=1), nn.BatchNorm2d(C), nn.ReLU()
        self.conv1 = nn.Conv2d(C, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.norm(self.relu(self.conv0(x))))


def test_an_activation_module_run_before_the_norm_is_one_op_moved():
    torch.manual_seed(0)
    reference, candidate = _Layer().double().eval(), _ReluModuleFirst().double().eval()
    with torch.no_grad():
        reference.norm.bn.running_mean.normal_(0, 0.3)
    weights = harness.map_weights(candidate, reference, torch.randn(2, C, 6, 6, dtype=torch.float64))
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, torch.randn(2, C, 6, 6, dtype=torch.float64), weights=weights)
    texts = [f["text"] for f in report.diagnosis]
    assert texts and "in another place than the reference's" in texts[0] and "relu" in texts[0] \
        and not any("extra relu" in t for t in texts), "\n".join(texts) or "(no diagnosis)"


def test_an_activation_module_without_a_twin_run_before_the_norm_is_one_op_moved_in_the_parent():
    torch.manual_seed(0)
    reference, candidate = _Layer().double().eval(), _ReluModuleFirst().double().eval()
    with torch.no_grad():
        reference.norm.bn.running_mean.normal_(0, 0.3)
    x = torch.randn(2, C, 6, 6, dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, x, weights=weights)
    texts = [f["text"] for f in report.diagnosis]
    assert texts and texts[0].startswith("<root>: relu in another place than the reference's") \
        and not any("extra relu" in t for t in texts), f"culprit {report.culprit}\n" + ("\n".join(texts) or "(no diagnosis)")
