"""A backbone without a twin (the original runs its layers and final norm in the root's own code)
that stops applying its final norm: paired by shape alone with the original's norm, it returns
what that norm receives, not what it gives. The backbone left the norm out and is named, not the
root around it."""

from __future__ import annotations

import torch
from torch import nn

from helpers import compare_port

D = 8


class Original(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.block, self.norm, self.head = nn.Linear(4, D), nn.Linear(D, D), nn.LayerNorm(D), nn.Linear(D, 3)

    def forward(self, x):
        x = self.embed(x)
        return self.head(self.norm(x + torch.tanh(self.block(x)))[:, 0])


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.layer, self.final_norm = nn.Linear(4, D), nn.Linear(D, D), nn.LayerNorm(D)

    def forward(self, x):
        x = self.embed(x)
        return self.final_norm(x + torch.tanh(self.layer(x)))


class Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.classifier = Backbone(), nn.Linear(D, 3)

    def forward(self, x):
        return self.classifier(self.backbone(x)[:, 0])


def test_backbone_whose_final_norm_is_an_identity_is_the_culprit_not_the_root():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    report = compare_port(Port().double().eval(), Original().double().eval(), x,
                          lambda port: setattr(port.backbone, "final_norm", nn.Identity()))
    assert not report.passed
    assert report.culprit in ("backbone", "backbone.final_norm"), \
        f"culprit {report.culprit}, expected backbone (it returns what the original's norm receives)\n{report.format()}"
