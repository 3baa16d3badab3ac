"""Two models may call whole modules in another order: a feature pyramid running each lateral conv
and then its smoothing conv level by level, against a port running every lateral first. The in-order
alignment cannot follow; the reference's modules are put in the order of the candidate's modules of
the same tensor shapes, and that order is kept where it pairs more tensors."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import harness
from helpers import transferred
from port_toys import randomized

CHANNELS = (4, 8, 12)
WIDTH = 8


class _LevelByLevel(nn.Module):
    """A feature pyramid as torchvision writes it: lateral, then smoothing, from the top level down,
    each conv wrapped in a block of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.ModuleList(nn.Sequential(nn.Conv2d(c, WIDTH, 1)) for c in CHANNELS)
        self.smooth = nn.ModuleList(nn.Sequential(nn.Conv2d(WIDTH, WIDTH, 3, padding=1)) for _ in CHANNELS)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        top = self.inner[-1](feats[-1])
        outs = [self.smooth[-1](top)]
        for i in range(len(feats) - 2, -1, -1):
            top = self.inner[i](feats[i]) + F.interpolate(top, size=feats[i].shape[-2:], mode="nearest")
            outs.insert(0, self.smooth[i](top))
        return outs


class _LateralsFirst(nn.Module):
    """The same pyramid computing every lateral first, then the top-down sums and smoothing."""

    def __init__(self) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, WIDTH, 1) for c in CHANNELS)
        self.output = nn.ModuleList(nn.Conv2d(WIDTH, WIDTH, 3, padding=1) for _ in CHANNELS)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        lateral = [m(f) for m, f in zip(self.lateral, feats)]
        top = lateral[-1]
        outs = [self.output[-1](top)]
        for i in range(len(feats) - 2, -1, -1):
            top = lateral[i] + F.interpolate(top, size=lateral[i].shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](top))
        return outs


def _features() -> tuple:
    g = torch.Generator().manual_seed(0)
    return ((tuple(torch.randn(1, c, 8 // 2 ** i, 8 // 2 ** i, generator=g, dtype=torch.float64)
                   for i, c in enumerate(CHANNELS)),))


def test_modules_called_in_another_order_take_their_twins_tensors():
    _, _, weights = transferred(_LateralsFirst().double().eval(), randomized(_LevelByLevel(), 1), _features())
    wrong = {e.candidate: e.reference[0] for e in weights.entries
             if e.reference[0].replace("inner", "lateral").replace("smooth", "output").replace(".0.", ".", 1)
             != e.candidate}
    assert weights.verified and weights.coverage == 1.0 and not wrong, \
        f"expected each lateral and output conv to take its twin's tensors, verified; wrong: {wrong}\n{weights}"


def test_a_port_running_every_lateral_first_passes():
    candidate, reference, weights = transferred(_LateralsFirst().double().eval(), randomized(_LevelByLevel(), 1),
                                                _features())
    report = harness.compare(candidate, reference, _features(), weights=weights)
    assert report.passed, report.format()

