"""A backbone without a twin (the original runs its layers and final norm in the root's own code)
that stops applying its final norm: paired by shape alone with the original's norm, it returns
what that norm receives, not what it gives. The backbone left the norm out and is named, not the
root around it. Where the port's copy of the norm is the root's own (a root that skips it), the
backbone before it is not blamed: the root is."""

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


class Layers(nn.Module):
    """A backbone whose final norm is its caller's."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.layer = nn.Linear(4, D), nn.Linear(D, D)

    def forward(self, x):
        x = self.embed(x)
        return x + torch.tanh(self.layer(x))


class NormInRoot(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers, self.post_norm, self.classifier = Layers(), nn.LayerNorm(D), nn.Linear(D, 3)
        self.skip_norm = False

    def forward(self, x):
        x = self.layers(x)
        return self.classifier((x if self.skip_norm else self.post_norm(x))[:, 0])


def test_root_that_skips_the_norm_it_holds_is_the_culprit_not_the_backbone_before_it():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    report = compare_port(NormInRoot().double().eval(), Original().double().eval(), x,
                          lambda port: setattr(port, "skip_norm", True))
    assert not report.passed
    assert report.culprit == "<root>", \
        f"culprit {report.culprit}, expected <root> (it holds the norm it skips)\n{report.format()}"
