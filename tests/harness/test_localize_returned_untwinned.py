"""A wrapped port whose inner model (without a twin: the original's root runs its layers and final
norm through a method, not a call) returns un-normed tokens, and whose wrapper returns them as it
got them: the wrapper's own code computes nothing after the inner model, so the inner model, the
code that left the norm out, is named, not the wrapper. Where the wrapper holds the norm's copy and
skips it, the wrapper is named."""

from __future__ import annotations

import torch
from torch import nn

from helpers import compare_port

D = 8


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer, self.act = nn.Linear(D, D), nn.Tanh()

    def forward(self, h):
        return h + self.act(self.layer(h))


class Features(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.blocks, self.norm = nn.Linear(4, D), Encoder(), nn.LayerNorm(D)

    def features(self, x):
        return self.norm(self.blocks(self.embed(x)))


class Original(nn.Module):
    """Runs its features through a method: ``net`` itself is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Features()

    def forward(self, x):
        return self.net.features(x)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch, self.encoder, self.post_norm = nn.Linear(4, D), Encoder(), nn.LayerNorm(D)

    def forward(self, x):
        return self.post_norm(self.encoder(self.patch(x)))


class Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.m = Model()

    def forward(self, x):
        return self.m(x)


class WrapperNorms(nn.Module):
    """The final norm is the wrapper's own."""

    def __init__(self) -> None:
        super().__init__()
        self.m, self.post_norm = nn.Sequential(nn.Linear(4, D), Encoder()), nn.LayerNorm(D)
        self.skip_norm = False

    def forward(self, x):
        x = self.m(x)
        return x if self.skip_norm else self.post_norm(x)


def tokens():
    return torch.randn(2, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_correct_wrapped_port_passes():
    report = compare_port(Wrapped().double().eval(), Original().double().eval(), tokens())
    assert report.passed, report.format()


def test_inner_model_whose_final_norm_is_an_identity_is_the_culprit_not_the_wrapper():
    report = compare_port(Wrapped().double().eval(), Original().double().eval(), tokens(),
                          lambda port: setattr(port.m, "post_norm", nn.Identity()))
    assert not report.passed
    assert report.culprit in ("m", "m.post_norm"), \
        f"culprit {report.culprit}, expected m (its forward returns the un-normed tokens)\n{report.format()}"


def test_wrapper_that_skips_the_norm_it_holds_is_the_culprit_not_the_model_before_it():
    report = compare_port(WrapperNorms().double().eval(), Original().double().eval(), tokens(),
                          lambda port: setattr(port, "skip_norm", True))
    assert not report.passed
    assert report.culprit == "<root>", f"culprit {report.culprit}, expected <root> (it holds the norm it skips)\n" \
                                      f"{report.format()}"
