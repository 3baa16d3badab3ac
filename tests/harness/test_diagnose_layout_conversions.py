"""A layout op that only converts between the two implementations' layouts (a permute into NCHW
for a convolution, a token sequence flattened from a map) is what the correct port does too: it is
never the finding. The diagnosis goes on to the real difference; where the layout ops themselves
move the values elsewhere, it says what they do to the values."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from helpers import compare_port, findings_text

C = 8  # as many channels as rows and columns: NHWC and NCHW maps of one shape


class _NchwBlock(nn.Module):
    """A ConvNeXt block as the reference writes it: depthwise conv on NCHW, the MLP channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(C, C, 3, padding=1, groups=C)
        self.norm = nn.LayerNorm(C)
        self.fc1, self.fc2 = nn.Linear(C, 2 * C), nn.Linear(2 * C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        return x + self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)


class _NhwcBlock(_NchwBlock):
    """The same block on an NHWC map, permuted into NCHW for its convolution only."""

    residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        y = self.norm(self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        y = self.fc2(F.gelu(self.fc1(y)))
        return x + y if self.residual else y


class _NchwNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block = nn.Conv2d(3, C, 2, stride=2), _NchwBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))


class _NhwcNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block = nn.Conv2d(3, C, 2, stride=2), _NhwcBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _compare_channels_last(change=lambda cand: None):
    ref = _NchwNet().double().eval()
    x = torch.randn(1, 3, 2 * C, 2 * C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return compare_port(_NhwcNet().double().eval(), ref, x, change)


def test_a_channels_last_port_of_a_square_map_passes() -> None:
    report = _compare_channels_last()
    assert report.passed, report.format()


def test_a_dropped_residual_on_a_square_channels_last_map_is_the_finding_not_its_permute() -> None:
    report = _compare_channels_last(lambda cand: setattr(cand.block, "residual", False))
    assert report.culprit == "block", f"culprit {report.culprit!r}, expected 'block'"
    first = report.diagnosis[0] if report.diagnosis else {}
    assert (first.get("kind"), first.get("op")) == ("missing_op", "add"), findings_text(report.diagnosis)


class _ShuffledUnit(nn.Module):
    """Two branches joined, then their channels interleaved as a channel shuffle of two groups does
    (torchvision's view, transpose, view)."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Conv2d(C, C, 1), nn.Conv2d(C, C, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.left(x), self.right(x)], dim=1)
        b, c, h, w = out.shape
        return out.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


class _IndexShuffledUnit(_ShuffledUnit):
    """The same shuffle as a gather of the channels at the interleaving permutation; ``inverse``:
    at its inverse, which takes the shuffled channels back."""

    inverse = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.left(x), self.right(x)], dim=1)
        order = torch.arange(out.shape[1]).view(2, -1)
        return out[:, (order if self.inverse else order.t()).reshape(-1)]


class _ShuffleNet(nn.Module):
    def __init__(self, unit: type[nn.Module]) -> None:
        super().__init__()
        self.stem, self.unit, self.head = nn.Conv2d(3, C, 1), unit(), nn.Conv2d(2 * C, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.unit(self.stem(x)))


def _compare_shuffles(change=lambda cand: None):
    ref = _ShuffleNet(_ShuffledUnit).double().eval()
    x = torch.randn(1, 3, 6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return compare_port(_ShuffleNet(_IndexShuffledUnit).double().eval(), ref, x, change)


def test_a_channel_shuffle_written_as_a_gather_passes() -> None:
    report = _compare_shuffles()
    assert report.passed, report.format()


def test_an_inverse_channel_shuffle_names_the_channels_it_moves_not_its_gather() -> None:
    report = _compare_shuffles(lambda cand: setattr(cand.unit, "inverse", True))
    assert report.culprit == "unit", f"culprit {report.culprit!r}, expected 'unit'"
    first = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert "another order" in first and "along dim 1" in first, findings_text(report.diagnosis)
