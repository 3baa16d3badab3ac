"""A feed-forward whose own code calls its activation before the depthwise conv instead of after
it: the activation, an untwinned module without parameters, gives what the reference's
activation gives when run on that call's inputs. Its code is right and it is cleared; the
feed-forward, whose code calls it in the wrong place, is named. An activation computing another
function (a tanh for the GELU) gives other values on those inputs, and stays the culprit."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from helpers import compare_port

C, H, W = 8, 4, 4


class Gelu(nn.Module):
    """The original's activation: a class of its own."""

    def forward(self, x):
        return F.gelu(x)


class MixFFN(nn.Module):
    """Linear, depthwise conv over the token grid, activation, linear (SegFormer's Mix-FFN)."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.fc1, self.dw, self.act, self.fc2 = nn.Linear(C, 2 * C), nn.Conv2d(2 * C, 2 * C, 3, 1, 1, groups=2 * C), \
            act, nn.Linear(2 * C, C)

    def grid_conv(self, x):
        b, n, c = x.shape
        return self.dw(x.transpose(1, 2).reshape(b, c, H, W)).flatten(2).transpose(1, 2)

    def forward(self, x):
        return self.fc2(self.act(self.grid_conv(self.fc1(x))))


class Original(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mlp, self.head = nn.Linear(3, C), MixFFN(Gelu()), nn.Linear(C, 2)

    def forward(self, x):
        return self.head(self.mlp(self.embed(x)))


def _act_first(self, x):
    return self.fc2(self.grid_conv(self.act(self.fc1(x))))


class Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.ffn, self.classifier = nn.Linear(3, C), MixFFN(nn.GELU()), nn.Linear(C, 2)

    def forward(self, x):
        return self.classifier(self.ffn(self.embed(x)))


def test_activation_called_before_the_conv_it_follows_blames_the_feed_forward():
    torch.manual_seed(0)
    x = torch.randn(2, H * W, 3, dtype=torch.float64)
    report = compare_port(Port().double().eval(), Original().double().eval(), x,
                          lambda port: setattr(port.ffn, "forward", _act_first.__get__(port.ffn)))
    assert not report.passed
    assert report.culprit == "ffn", \
        f"culprit {report.culprit}, expected ffn (its GELU computes right; it is called before the conv)\n{report.format()}"


def test_activation_computing_another_function_stays_the_culprit():
    torch.manual_seed(0)
    x = torch.randn(2, H * W, 3, dtype=torch.float64)
    report = compare_port(Port().double().eval(), Original().double().eval(), x,
                          lambda port: setattr(port.ffn, "act", nn.Tanh()))
    assert not report.passed
    assert report.culprit == "ffn.act", \
        f"culprit {report.culprit}, expected ffn.act (a tanh where the reference applies a GELU)\n{report.format()}"
