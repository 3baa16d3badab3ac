"""A port that pads explicitly: ConvNeXt written channels-last with HWIO kernels, its 7x7
depthwise convolution ``F.conv2d(F.pad(x, 3), padding=0)`` against timm's ``padding=3``. The two
compute the same; a bug elsewhere in the block is named, never the padding."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import harness
from helpers import findings_text

timm_convnext = pytest.importorskip("timm.models.convnext")


class _Norm(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.scale, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.scale, self.bias, 1e-6)


class _ConvHWIO(nn.Module):
    """A strided patch convolution on channels-last maps, its kernel stored (k, k, in, out)."""

    def __init__(self, k: int, c_in: int, c_out: int) -> None:
        super().__init__()
        self.kernel, self.bias, self.k = nn.Parameter(torch.zeros(k, k, c_in, c_out)), nn.Parameter(torch.zeros(c_out)), k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x.permute(0, 3, 1, 2), self.kernel.permute(3, 2, 0, 1), self.bias, stride=self.k).permute(0, 2, 3, 1)


class _Depthwise(nn.Module):
    """The 7x7 depthwise convolution, padded by ``F.pad`` before an unpadded ``F.conv2d``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.kernel, self.bias = nn.Parameter(torch.zeros(7, 7, 1, c)), nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x.permute(0, 3, 1, 2), (3, 3, 3, 3))
        return F.conv2d(x, self.kernel.permute(3, 2, 0, 1), self.bias, groups=x.shape[1]).permute(0, 2, 3, 1)


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw, self.ln, self.approximate = _Depthwise(c), _Norm(c), "none"
        self.w1, self.b1 = nn.Parameter(torch.zeros(c, 4 * c)), nn.Parameter(torch.zeros(4 * c))
        self.w2, self.b2 = nn.Parameter(torch.zeros(4 * c, c)), nn.Parameter(torch.zeros(c))
        self.gamma = nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.ln(self.dw(x)) @ self.w1 + self.b1, approximate=self.approximate)
        return x + (y @ self.w2 + self.b2) * self.gamma


class _Port(nn.Module):
    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.stem, self.stem_ln, self.stages = _ConvHWIO(4, 3, dims[0]), _Norm(dims[0]), nn.ModuleList()
        for i, d in enumerate(dims):
            stage = nn.Module()
            if i:
                stage.down_ln, stage.down = _Norm(dims[i - 1]), _ConvHWIO(2, dims[i - 1], d)
            stage.block = _Block(d)
            self.stages.append(stage)
        self.head_ln, self.fc = nn.LayerNorm(dims[-1], eps=1e-6), nn.Linear(dims[-1], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_ln(self.stem(x.permute(0, 2, 3, 1)))
        for i, stage in enumerate(self.stages):
            x = stage.block(stage.down(stage.down_ln(x)) if i else x)
        return self.fc(self.head_ln(x.mean((1, 2))))


def test_a_bug_after_an_explicitly_padded_depthwise_conv_is_named_not_the_padding():
    dims = (16, 32, 48, 64)
    reference = timm_convnext.ConvNeXt(depths=(1, 1, 1, 1), dims=dims, num_classes=10).double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    candidate = _Port(dims).double().eval()
    x = torch.randn(2, 3, 32, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    assert weights.verified and harness.compare(candidate, reference, x, weights=weights).passed, str(weights)
    candidate.stages[1].block.approximate = "tanh"
    report = harness.compare(candidate, reference, x, weights=weights)
    texts = findings_text(report.diagnosis)
    assert "gelu approximate 'tanh' in the candidate, 'none' in the reference" in texts and "pad" not in texts, \
        f"the padding, spelled otherwise, is blamed for the GELU:\n{texts}"
