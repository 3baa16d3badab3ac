"""A torch lookup (``nn.Embedding``) without a twin reads the rows its caller asks for: handed
other ids (position ids flipped in the caller's code), it still returns rows of its table, the
table the weight map filled. The lookup did its part right and is cleared; the caller whose code
chose the ids is named. A lookup returning a row that no reference tensor holds read a table of
its own, and stays a suspect."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import findings_text, inject_forward, transferred

D, N = 16, 6


class Original(nn.Module):
    """The position table is a parameter added in the root's own code."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Linear(8, D)
        self.pos = nn.Parameter(torch.randn(1, N, D))
        self.block, self.norm, self.head = nn.Linear(D, D), nn.LayerNorm(D), nn.Linear(D, 3)

    def forward(self, x):
        x = self.patch(x) + self.pos
        return self.head(self.norm(x + torch.tanh(self.block(x))).mean(1))


class Embeddings(nn.Module):
    """The port looks its table up by position ids, as transformers' vision models do."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, D)
        self.positions = nn.Embedding(N, D)
        self.register_buffer("ids", torch.arange(N)[None], persistent=False)

    def forward(self, x):
        return self.proj(x) + self.positions(self.ids)


class Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embeddings = Embeddings()
        self.mix, self.final_norm, self.classifier = nn.Linear(D, D), nn.LayerNorm(D), nn.Linear(D, 3)

    def forward(self, x):
        x = self.embeddings(x)
        return self.classifier(self.final_norm(x + torch.tanh(self.mix(x))).mean(1))


def _ids_flipped(self, x):
    return self.proj(x) + self.positions(self.ids.flip(-1))


def _compared(change) -> harness.Report:
    torch.manual_seed(0)
    x = torch.randn(2, N, 8, dtype=torch.float64)
    port, original, weights = transferred(Port().double().eval(), Original().double().eval(), x)
    change(port)
    return harness.compare(port, original, x, weights=weights)


def test_lookup_handed_flipped_ids_is_cleared_and_its_caller_named():
    report = _compared(lambda port: inject_forward(port.embeddings, _ids_flipped))
    assert not report.passed
    assert report.culprit == "embeddings", \
        f"culprit {report.culprit}, expected embeddings (the lookup read its table right)\n{findings_text(report.diagnosis)}"



def test_lookup_whose_table_holds_other_rows_than_the_references_stays_the_culprit():
    def changed_row(port):
        with torch.no_grad():
            port.embeddings.positions.weight[1, 2] += 0.01

    report = _compared(changed_row)
    assert not report.passed
    assert report.culprit == "embeddings.positions", \
        f"culprit {report.culprit}, expected embeddings.positions (a row of its table is not the reference's)\n" \
        f"{findings_text(report.diagnosis)}"
