"""Twins one of which computes one position of the other's output, seen from the reference's
side: a port running its final norm on ``[pooled; tokens]`` and keeping the pooled row, against a
head that norms the pooled row alone. The row is compared at that position of the candidate's
output, so a correct port passes and its map verifies, at float64 and against the float32 rounding
floor; an error in the norm is still the norm's. Twins whose shapes nothing relates are never
compared: with agreeing outputs the run passes and a note says which were not checked."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import transferred

D = 16


class PoolThenNormHead(nn.Module):
    """The original: tokens, their mean, then a head norming that pooled row alone."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mix, self.head = nn.Linear(8, D), nn.Linear(D, D), nn.LayerNorm(D)

    def forward(self, x):
        x = self.embed(x)
        x = x + torch.tanh(self.mix(x))
        return self.head(x.mean(1))


class NormOnPooledAndTokens(nn.Module):
    """The port: the final norm on the pooled row and every token at once, the pooled row kept."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.ff, self.layer_norm = nn.Linear(8, D), nn.Linear(D, D), nn.LayerNorm(D)

    def forward(self, x):
        x = self.proj(x)
        x = x + torch.tanh(self.ff(x))
        return self.layer_norm(torch.cat([x.mean(1, keepdim=True), x], 1))[:, 0]


def _ported(dtype=torch.float64):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    original = PoolThenNormHead().double().eval()
    with torch.no_grad():
        original.head.weight.normal_(1, 0.2), original.head.bias.normal_(0, 0.2)
    port, original, weights = transferred(NormOnPooledAndTokens().double().eval(), original, x)
    return port.to(dtype), original.to(dtype), weights, x.to(dtype)


def test_map_of_a_norm_on_pooled_and_tokens_against_a_pooled_head_is_verified():
    port, original, weights, x = _ported()
    assert weights.verified, f"the map should verify: {weights}"


def test_norm_on_pooled_and_tokens_passes_against_a_head_norming_the_pooled_row():
    port, original, weights, x = _ported()
    report = harness.compare(port, original, x, weights=weights)
    assert report.passed, f"a correct port should pass\n{report.format()}"


def test_norm_on_pooled_and_tokens_row_is_compared_at_the_pooled_position():
    port, original, weights, x = _ported()
    row = next(r for r in harness.compare(port, original, x, weights=weights).rows if r.candidate == "layer_norm")
    assert (row.passed, row.adapter) == (True, "the candidate's 0 along dim 1 (the reference computes that position only)"), \
        f"the norm's row: passed {row.passed}, adapter {row.adapter!r}; expected it compared at the candidate's position 0"


def test_norm_on_pooled_and_tokens_passes_at_float32_against_the_rounding_floor():
    port, original, weights, x = _ported(torch.float32)
    report = harness.compare(port, original, x, weights=weights)
    row = next(r for r in report.rows if r.candidate == "layer_norm")
    assert report.passed and row.noise is not None and row.noise.passed, \
        f"passed {report.passed}, norm judged by the floor: {row.noise}\n{report.format()}"


def test_eps_changed_in_the_norm_on_pooled_and_tokens_blames_it():
    port, original, weights, x = _ported()
    port.layer_norm.eps = 1e-1
    report = harness.compare(port, original, x, weights=weights)
    assert (report.passed, report.culprit) == (False, "layer_norm"), \
        f"passed {report.passed}, culprit {report.culprit}; expected layer_norm\n{report.format()}"


class NormEveryToken(nn.Module):
    """The original: a norm over every token, then every other token kept."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.norm = nn.Linear(8, D), nn.LayerNorm(D)

    def forward(self, x):
        return self.norm(self.embed(x))[:, ::2]


class NormKeptTokens(nn.Module):
    """The port: every other token first, then the norm on those alone: the norm's outputs
    (3 tokens against 6) are related by no layout and no single position."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.post_norm = nn.Linear(8, D), nn.LayerNorm(D)

    def forward(self, x):
        return self.post_norm(self.proj(x)[:, ::2])


def _unrelated():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    return (*transferred(NormKeptTokens().double().eval(), NormEveryToken().double().eval(), x), x)


def test_twins_of_unrelated_shapes_do_not_fail_a_run_whose_outputs_agree():
    port, original, weights, x = _unrelated()
    report = harness.compare(port, original, x, weights=weights)
    assert report.passed and report.output.max_abs == 0.0, f"agreeing outputs should pass\n{report.format()}"


def test_twins_of_unrelated_shapes_are_named_as_not_checked():
    port, original, weights, x = _unrelated()
    report = harness.compare(port, original, x, weights=weights)
    note = next((n for n in report.notes if n.startswith("not checked")), None)
    assert note is not None and "post_norm#0 (2x3x16 against norm's 2x6x16)" in note, \
        f"expected a note naming post_norm as not checked, got notes {report.notes}"


def test_twins_of_unrelated_shapes_do_not_hide_an_error_in_the_outputs():
    port, original, weights, x = _unrelated()
    port.post_norm.eps = 1e-1
    report = harness.compare(port, original, x, weights=weights)
    assert not report.passed, f"outputs that differ must fail\n{report.format()}"
