"""A residual dropped after a stretch the port writes otherwise: ops of other shapes than the
reference's (a GELU on each half of the features where the reference's runs on both, one path
weighed at a time where the reference weighs the paths stacked) rejoin the reference's values
further on, so they are a rewrite, and the walk goes on to the missing ``add``. A shortcut branch
dropped with its add (a projection's conv and norm) reads as that one missing add, the branch's
ops named in it."""

import torch
import torch.nn.functional as F
from torch import nn

from helpers import compare_port, findings_text
from port_toys import randomized

DIM, HIDDEN = 8, 16


class FusedGate(nn.Module):
    """``x + out(u * v)`` with ``u, v = gelu(fc(x)).chunk(2)``: one projection, one GELU on both halves."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(DIM, 2 * HIDDEN), nn.Linear(HIDDEN, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = F.gelu(self.fc(x)).chunk(2, -1)
        return x + self.out(u * v)


class SplitGate(nn.Module):
    """``FusedGate`` with a projection and a GELU per half; ``residual=False`` drops the add."""

    def __init__(self) -> None:
        super().__init__()
        self.to_u, self.to_v, self.out = nn.Linear(DIM, HIDDEN), nn.Linear(DIM, HIDDEN), nn.Linear(HIDDEN, DIM)
        self.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.out(F.gelu(self.to_u(x)) * F.gelu(self.to_v(x)))
        return x + y if self.residual else y


class Net(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.embed, self.block, self.head = nn.Linear(4, DIM), block, nn.Linear(DIM, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(x)))


class ProjectedBlock(nn.Module):
    """``relu(bn(conv(x)) + shortcut(x))``, the shortcut a 1x1 conv and a norm of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.shortcut = nn.Sequential(nn.Conv2d(4, 8, 1, bias=False), nn.BatchNorm2d(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)) + self.shortcut(x))


class PortBlock(nn.Module):
    """``ProjectedBlock`` written with other names; ``residual=False`` drops the shortcut and its add."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.skip = nn.Sequential(nn.Conv2d(4, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return F.relu(y + self.skip(x) if self.residual else y)


class ConvNet(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.stem, self.block, self.head = nn.Conv2d(3, 4, 1), block, nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


def _drop_residual(model: nn.Module) -> None:
    model.block.residual = False


def test_a_residual_dropped_after_a_rewritten_gate_reads_as_the_missing_add() -> None:
    x = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    report = compare_port(Net(SplitGate()).double().eval(), randomized(Net(FusedGate()), seed=1), x, _drop_residual)
    first = report.diagnosis[0] if report.diagnosis else {}
    assert report.culprit == "block" and first.get("kind") == "missing_op" and first.get("op") == "add", \
        f"expected block blamed for the missing add (the GELU per half is a rewrite), got culprit {report.culprit}:\n" \
        f"{findings_text(report.diagnosis)}"


def test_a_rewritten_gate_ported_right_passes() -> None:
    x = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    report = compare_port(Net(SplitGate()).double().eval(), randomized(Net(FusedGate()), seed=1), x)
    assert report.passed, f"expected the right port to pass, got:\n{report.format()}"


def test_a_dropped_shortcut_branch_reads_as_one_missing_add() -> None:
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    report = compare_port(ConvNet(PortBlock()).double().eval(), randomized(ConvNet(ProjectedBlock()), seed=2), x,
                          _drop_residual)
    first = report.diagnosis[0] if report.diagnosis else {}
    lone = [f for f in report.diagnosis if f["kind"] == "missing_op" and f["op"] != "add"]
    assert first.get("op") == "add" and "conv2d" in first.get("text", "") and "batch_norm" in first["text"] \
        and not lone, \
        f"expected one missing add naming the shortcut's conv2d and batch_norm it adds, got:\n" \
        f"{findings_text(report.diagnosis)}"
