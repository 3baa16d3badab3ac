"""Models left at their initialization hold many tensors of one value (every norm's weight one, its
bias and mean zero, its variance one): a map exchanging two of them transfers the same values either
way, so its check runs on a copy of the reference whose tied tensors are moved apart, and the twins
it pairs through the weights are the right ones. A port of a fresh model then passes."""

from __future__ import annotations

import torch
from torch import nn

import harness
from port_toys import conv_bn


class _Port(nn.Module):
    """A basic residual block whose 1x1 projection shortcut runs first: its three norms have one
    shape, and the order of first use pairs them with the original's norms crosswise."""

    def __init__(self) -> None:
        super().__init__()
        self.shortcut, self.cn1, self.cn2 = conv_bn(4, 8, 1), conv_bn(4, 8, 3), conv_bn(8, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        return torch.relu(self.cn2(torch.relu(self.cn1(x))) + shortcut)


class _Original(nn.Module):
    """The same block with flat names and the shortcut computed last."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.downsample = conv_bn(4, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.downsample(x))


def _fresh_pair() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    port, original = _Port().double().eval(), _Original().double().eval()
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return port, original, x


def _mapped() -> tuple[harness.WeightMap, nn.Module, nn.Module, torch.Tensor]:
    port, original, x = _fresh_pair()
    weights = harness.map_weights(port, original, x)
    weights.transfer(original, port)
    return weights, port, original, x


def test_a_fresh_models_norms_are_mapped_by_their_place():
    weights, *_ = _mapped()
    pairs = {e.candidate: e.reference[0] for e in weights.entries}
    assert weights.verified and pairs["shortcut.1.weight"] == "downsample.1.weight" \
        and pairs["cn1.1.weight"] == "bn1.weight", f"conflicts {weights.conflicts}\n{weights}"


def test_a_port_of_a_fresh_model_passes():
    weights, port, original, x = _mapped()
    report = harness.compare(port, original, x, weights=weights)
    assert report.passed, report.format()


def test_the_check_leaves_the_fresh_reference_as_it_was():
    port, original, x = _fresh_pair()
    before = {k: v.clone() for k, v in original.state_dict().items()}
    harness.map_weights(port, original, x)
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())
