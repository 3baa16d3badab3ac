"""A module that computes one position of its twin's output: a norm run on the pooled class token
against one run on every token before the class token is taken. Its row is compared at that
position; an error in it is still its own."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import transferred

D = 16


class NormThenPool(nn.Module):
    """The original: the final norm over every token, then the class token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mix, self.norm, self.head = nn.Linear(8, D), nn.Linear(D, D), nn.LayerNorm(D), nn.Linear(D, 4)

    def forward(self, x):
        x = self.embed(x)
        x = x + torch.tanh(self.mix(x))
        return self.head(self.norm(x)[:, 0])


class PoolThenNorm(nn.Module):
    """The port: the class token first, then the norm on it alone."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.ff, self.post_norm, self.out = nn.Linear(8, D), nn.Linear(D, D), nn.LayerNorm(D), nn.Linear(D, 4)

    def forward(self, x):
        x = self.proj(x)
        x = x + torch.tanh(self.ff(x))
        return self.out(self.post_norm(x[:, 0]))


def _ported():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    original = NormThenPool().double().eval()
    with torch.no_grad():
        original.norm.weight.normal_(1, 0.2), original.norm.bias.normal_(0, 0.2)
    return (*transferred(PoolThenNorm().double().eval(), original, x), x)


def test_map_of_a_norm_on_the_pooled_token_is_verified():
    port, original, weights, x = _ported()
    assert weights.verified, f"the map should verify: {weights}"


def test_norm_on_the_pooled_token_passes_against_a_norm_on_every_token():
    port, original, weights, x = _ported()
    report = harness.compare(port, original, x, weights=weights)
    assert report.passed, report.format()


def test_eps_changed_in_the_norm_on_the_pooled_token_blames_it():
    port, original, weights, x = _ported()
    port.post_norm.eps = 1e-2
    report = harness.compare(port, original, x, weights=weights)
    assert report.culprit == "post_norm", f"culprit {report.culprit}, expected post_norm\n{report.format()}"


def test_pooling_another_token_blames_the_code_that_pools():
    port, original, weights, x = _ported()
    port.forward = lambda h: port.out(port.post_norm((port.proj(h) + torch.tanh(port.ff(port.proj(h))))[:, 1]))
    report = harness.compare(port, original, x, weights=weights)
    assert (report.passed, report.culprit) == (False, "<root>"), \
        f"culprit {report.culprit}, expected <root>, whose own code takes token 1\n{report.format()}"
