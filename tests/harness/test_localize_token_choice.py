"""A port whose encoder adds the position table, runs the layers and the final norm, all agreeing,
while the root reads the wrong token after it (``[:, 1]`` for the class token ``[:, 0]``): the
encoder has no twin, returns its norm's agreeing output as it is and holds a table of its own, but
used it (it hands its layers something other than its input), so it is not blamed: the root's own
code chose the token. When the encoder no longer adds its table, it is named, and so is the why
(made on the original's root, whose code adds the table) about the encoder's own code."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import compare_port, inject_forward
from port_toys import ClassTokenOriginal

D, N = ClassTokenOriginal.width, ClassTokenOriginal.tokens


class Encoder(nn.Module):
    """The table added by the encoder before its layer and its final norm."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(1, N + 1, D))
        self.layer, self.ln = nn.Linear(D, D), nn.LayerNorm(D)

    def forward(self, x):
        x = x + self.table
        return self.ln(x + torch.tanh(self.layer(x)))


class Port(nn.Module):
    def __init__(self, token: int = 0) -> None:
        super().__init__()
        self.embed = nn.Linear(8, D)
        self.class_token = nn.Parameter(torch.zeros(1, 1, D))
        self.encoder, self.classifier = Encoder(), nn.Linear(D, 3)
        self.token = token

    def forward(self, x):
        x = torch.cat([self.class_token.expand(len(x), -1, -1), self.embed(x)], 1)
        return self.classifier(self.encoder(x)[:, self.token])


def ported():
    reference = ClassTokenOriginal().double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(1))
    x = torch.randn(2, N, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return Port().double().eval(), reference, x


def test_the_port_reading_the_class_token_passes():
    port, reference, x = ported()
    report = compare_port(port, reference, x)
    assert report.passed, report.format()


def test_reading_the_wrong_token_after_the_encoder_blames_the_root_not_the_encoder():
    port, reference, x = ported()
    report = compare_port(port, reference, x, lambda p: setattr(p, "token", 1))
    assert not report.passed and report.culprit == "<root>", report.format()


def _without_table(self, x):
    return self.ln(x + torch.tanh(self.layer(x)))


def test_an_encoder_that_no_longer_adds_its_table_is_named_by_the_why_too():
    port, reference, x = ported()
    report = compare_port(port, reference, x, lambda p: inject_forward(p.encoder, _without_table))
    first = report.diagnosis[0] if report.diagnosis else {}
    assert report.culprit == "encoder" and first.get("module") == "encoder", \
        f"culprit {report.culprit}, why on {first.get('module')}: {first.get('text')}"


def test_the_why_of_the_wrong_token_names_the_index_read():
    port, reference, x = ported()
    report = compare_port(port, reference, x, lambda p: setattr(p, "token", 1))
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert "index '[:, 1]' in the candidate, '[:, 0]' in the reference" in why and "index index" not in why, why
