"""A bug whose effect a later op cancels: an activation replaced before a batch norm whose scale is
zero (a residual block's last norm, initialized so), so the block returns what the reference's
does. The comparison fails at the activation, which has no twin module of its own, and no module
around it returns other values; the innermost twinned ancestor is re-run all the same, and its ops
show the replaced activation."""

import torch
from torch import nn
from torch.nn import functional as F

import harness
from port_toys import randomized


class Block(nn.Module):
    """``relu(x + bn2(conv2(relu(bn1(conv1(x))))))``, with ``bn2``'s scale zero."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))


class ConvLayer(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.norm, self.act = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class PortBlock(nn.Module):
    """``Block`` with each conv, norm and activation in one layer: the activation is no twin of its own."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.layer1, self.layer2 = ConvLayer(act), ConvLayer(nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.layer2(self.layer1(x)))


class Net(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.stem, self.block, self.head = nn.Conv2d(3, 8, 1), block, nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


def _report(act: nn.Module) -> "harness.Report":
    reference = randomized(Net(Block()), seed=5)
    with torch.no_grad():
        reference.block.bn2.weight.zero_()
    candidate = Net(PortBlock(act)).double().eval()
    candidate.load_state_dict(dict(zip(candidate.state_dict(), reference.state_dict().values(), strict=True)))
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return harness.compare(candidate, reference, x)


def test_activation_masked_by_a_zero_scale_norm_gets_a_why() -> None:
    report = _report(nn.GELU())
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert not report.passed and "applies gelu where the reference applies relu" in why, \
        f"expected a failing report whose why names gelu in the place of relu, got culprit {report.culprit}, " \
        f"why: {why or '(no why)'}"


def test_masked_block_ported_right_passes() -> None:
    report = _report(nn.ReLU())
    assert report.passed, f"expected the right port to pass, got:\n{report.format()}"
