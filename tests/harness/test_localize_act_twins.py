"""A norm that runs its activation inside (timm's ``BatchNormAct2d``) twinned with a norm whose
activation follows it, as a module (torchvision's ``BatchNorm2d`` then ``ReLU``) or as a function in
the caller's code (``F.relu`` after the BatchNorm). Downstream of an error the values cannot show
that the two are one call; the structure does. So an error has one origin, where it is made, and
the correct norms after it are not blamed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import compare_port, trained_statistics_
from port_toys import NormAct

C = 6


class _Reference(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(3, C, 3, padding=1), NormAct(C, nn.ReLU())
        self.conv2, self.norm2 = nn.Conv2d(C, C, 3, padding=1, groups=C), NormAct(C, nn.ReLU())
        self.conv3, self.norm3 = nn.Conv2d(C, C, 1), NormAct(C, nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm3(self.conv3(self.norm2(self.conv2(self.norm1(self.conv1(x))))))


class _ActModules(nn.Module):
    """The port with each activation a module after its norm, in one sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C), nn.ReLU(),
                                    nn.Conv2d(C, C, 3, padding=1, groups=C), nn.BatchNorm2d(C), nn.ReLU(),
                                    nn.Conv2d(C, C, 1), nn.BatchNorm2d(C), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _ConvNorm(nn.Module):
    def __init__(self, cin: int, groups: int = 1, kernel: int = 3) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(cin, C, kernel, padding=kernel // 2, groups=groups), nn.BatchNorm2d(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))  # the activation in the caller's code, not a module


class _ActFunctions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = _ConvNorm(3), _ConvNorm(C, groups=C), _ConvNorm(C, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x)))


def _reference() -> nn.Module:
    reference = _Reference().double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    return trained_statistics_(reference)


def _image() -> torch.Tensor:
    return torch.randn(2, 3, 7, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_an_activation_left_out_after_the_first_norm_is_blamed_there_not_on_a_later_norm() -> None:
    report = compare_port(_ActModules().double().eval(), _reference(), _image(),
                          lambda port: port.layers.__setitem__(2, nn.Identity()))
    assert report.introduced and not any(name in ("layers.4", "layers.7") for name in report.introduced), \
        f"introduced {report.introduced}: a later norm, which computes right, is blamed"


def test_an_error_upstream_of_norms_with_functional_activations_has_one_origin() -> None:
    report = compare_port(_ActFunctions().double().eval(), _reference(), _image(),
                          lambda port: port.a.conv.weight[0, 0, 1, 1].add_(0.1))
    assert report.introduced == ["a.conv"], f"introduced {report.introduced}, expected ['a.conv'] alone"


def test_an_activation_left_out_where_no_candidate_module_has_a_twin_is_placed_after_the_module_before_it() -> None:
    report = compare_port(_ActModules().double().eval(), _reference(), _image(),
                          lambda port: port.layers.__setitem__(2, nn.Identity()))
    assert report.diagnosis[0]["text"] == (
        "<root>: relu missing in the candidate between batch_norm and conv2d, after layers.1; "
        "the reference's norm1.act applies it"), report.diagnosis[0]["text"]


class _NormActModules(nn.Module):
    """The port with norm-activation modules of its own, as transformers' BiT has, under other names."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.n1 = nn.Conv2d(3, C, 3, padding=1), NormAct(C, nn.ReLU())
        self.dw, self.n2 = nn.Conv2d(C, C, 3, padding=1, groups=C), NormAct(C, nn.ReLU())
        self.pw, self.n3 = nn.Conv2d(C, C, 1), NormAct(C, nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.n3(self.pw(self.n2(self.dw(self.n1(self.stem(x))))))


def test_a_norm_activation_module_whose_activation_is_identity_is_blamed_itself_with_the_activation_named() -> None:
    report = compare_port(_NormActModules().double().eval(), _reference(), _image(),
                          lambda port: setattr(port.n2, "act", nn.Identity()))
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert report.culprit == "n2" and why.startswith("n2: relu missing"), report.format()
