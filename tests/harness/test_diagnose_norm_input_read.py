"""A layer reading a norm's input where the original reads the norm's output, the norm still run
(its result read by another layer, or by none): the layer's input is another op's value, not the
right one sliced or reordered, so the finding names the norm whose input it reads."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from helpers import compare_port, seeded, trained_statistics_
from port_toys import NormAct

DIM = 8


class PreNormBlock(nn.Module):
    """The original: a pre-norm residual block, a token mixer and an MLP, each after its norm."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.mix = nn.LayerNorm(DIM), nn.Linear(DIM, DIM)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(DIM), nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mix(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class PreNormPort(nn.Module):
    """The port, its own names; ``raw``: its MLP reads the residual stream, not ``ln2``'s result."""

    def __init__(self, raw: bool = False) -> None:
        super().__init__()
        self.ln1, self.mixer, self.ln2 = nn.LayerNorm(DIM), nn.Linear(DIM, DIM), nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))
        self.raw = raw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.ln1(x))
        normed = self.ln2(x)
        return x + self.mlp(x if self.raw else normed)


class PreActOriginal(nn.Module):
    """A pre-activation block (BiT's): its norm applies the ReLU inside, and both the projection
    shortcut and the main branch read the norm's output."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.downsample = NormAct(4, nn.ReLU()), nn.Conv2d(4, DIM, 1, bias=False)
        self.conv1, self.norm2, self.conv2 = nn.Conv2d(4, DIM, 3, padding=1, bias=False), NormAct(DIM, nn.ReLU()), \
            nn.Conv2d(DIM, DIM, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.norm1(x)
        return self.conv2(self.norm2(self.conv1(pre))) + self.downsample(pre)


class PreActPort(nn.Module):
    """The port, norm and activation apart; ``raw``: its projection reads the block's input."""

    def __init__(self, raw: bool = False) -> None:
        super().__init__()
        self.bn_a, self.proj = nn.BatchNorm2d(4), nn.Conv2d(4, DIM, 1, bias=False)
        self.conv_a, self.bn_b, self.conv_b = nn.Conv2d(4, DIM, 3, padding=1, bias=False), nn.BatchNorm2d(DIM), \
            nn.Conv2d(DIM, DIM, 3, padding=1, bias=False)
        self.raw = raw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn_a(x))
        return self.conv_b(F.relu(self.bn_b(self.conv_a(pre)))) + self.proj(x if self.raw else pre)


def _first(report) -> str:
    return report.diagnosis[0]["text"] if report.diagnosis else "(no finding)"


def _pre_norm_report():
    x = torch.randn(2, 5, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return compare_port(seeded(PreNormPort(), 0), seeded(PreNormBlock(), 0), x, lambda port: setattr(port, "raw", True))


def _pre_act_report():
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    reference = trained_statistics_(seeded(PreActOriginal(), 0))
    return compare_port(seeded(PreActPort(), 0), reference, x, lambda port: setattr(port, "raw", True))


def test_an_mlp_reading_its_norms_input_is_said_to_read_the_input_of_that_norm():
    report = _pre_norm_report()
    assert report.culprit == "<root>" and "mlp.0: linear reads the input of ln2 (layer_norm; the reference's norm2)" \
        in _first(report) and "reads its output" in _first(report), _first(report)


def test_a_projection_reading_the_input_of_a_norm_with_its_activation_inside_names_the_norm():
    report = _pre_act_report()
    assert "proj: conv2d reads the input of bn_a (batch_norm; the reference's norm1)" in _first(report) \
        and "reads its output" in _first(report), _first(report)


def test_a_layer_reading_a_norms_input_is_not_said_to_receive_reordered_values():
    report = _pre_act_report()
    assert not any("sliced, indexed or ordered differently" in f["text"] for f in report.diagnosis), _first(report)
