"""A ReLU the candidate applies to the shortcut operand of a residual add, where the reference
applies it after the add, is one op moved onto an operand: said so whether it changes the shortcut
or not (a shortcut coming out of a ReLU holds no negative values, and the moved ReLU changes nothing
there), never as a ReLU missing or an add fed other inputs."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import findings_text

C = 4


class _Branch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1, self.c2, self.b2 = nn.Conv2d(C, C, 3, padding=1), nn.BatchNorm2d(C), nn.Conv2d(C, C, 1), \
            nn.BatchNorm2d(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))


class _ActAfterAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f, self.act = _Branch(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.f(x))


class _ActOnShortcut(_ActAfterAdd):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x) + self.f(x)


class _Net(nn.Module):
    def __init__(self, block: nn.Module, stem_relu: bool) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(C, C, 1), nn.ReLU() if stem_relu else nn.Identity())
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))


def _diagnosis(stem_relu: bool) -> tuple[str, str]:
    torch.manual_seed(0)
    reference = _Net(_ActAfterAdd(), stem_relu).double().eval()
    candidate = _Net(_ActOnShortcut(), stem_relu).double().eval()
    candidate.load_state_dict(reference.state_dict())
    report = harness.compare(candidate, reference, torch.randn(2, C, 6, 6, dtype=torch.float64))
    return (report.diagnosis[0]["text"] if report.diagnosis else ""), findings_text(report.diagnosis)


def test_a_relu_moved_onto_a_shortcut_it_changes_is_said_moved_onto_the_operand():
    why, all_ = _diagnosis(stem_relu=False)
    assert "relu in another place than the reference's: missing in the candidate after the module's last " \
           "operation (add), extra on an operand of add" in why, all_


def test_a_relu_moved_onto_a_shortcut_it_leaves_unchanged_is_said_moved_not_missing():
    why, all_ = _diagnosis(stem_relu=True)
    assert "relu applied in another place than the reference's: the candidate applies it on an operand of add" \
           in why and "where it changes nothing on these inputs" in why, all_
