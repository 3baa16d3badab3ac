"""An untwinned ``embeddings`` that no longer uses the position table it holds: the original adds
its table in the root's own code, the port in an ``embeddings`` module of its own. The module
holding the port's copy of the table left the add out, and is named, whether the roots are
compared or the reference is run through ``reference_call`` (its root's forward never called)."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import findings_text, inject_forward
from port_toys import ClassTokenOriginal

D, N = ClassTokenOriginal.width, ClassTokenOriginal.tokens


class Embeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, D)
        self.class_token = nn.Parameter(torch.zeros(1, 1, D))
        self.table = nn.Parameter(torch.zeros(1, N + 1, D))

    def forward(self, x):
        return torch.cat([self.class_token.expand(len(x), -1, -1), self.proj(x)], 1) + self.table


class Port(nn.Module):
    """The table held and added by an embeddings module, which the original does not have."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = Embeddings()
        self.mix, self.final_norm, self.classifier = nn.Linear(D, D), nn.LayerNorm(D), nn.Linear(D, 3)

    def forward(self, x):
        x = self.embeddings(x)
        return self.classifier(self.final_norm(x + torch.tanh(self.mix(x)))[:, 0])


def _without_table(self, x):
    return torch.cat([self.class_token.expand(len(x), -1, -1), self.proj(x)], 1)


def _table_reversed(self, x):
    return torch.cat([self.class_token.expand(len(x), -1, -1), self.proj(x)], 1) + self.table.flip(1)


FEATURES = dict(candidate_outputs=lambda out: out, reference_call=lambda model, call: model.features(*call.args))


class PortFeatures(Port):
    def forward(self, x):
        x = self.embeddings(x)
        return self.final_norm(x + torch.tanh(self.mix(x)))


def _ported(port: nn.Module, **options):
    torch.manual_seed(0)
    x = torch.randn(2, N, 8, dtype=torch.float64)
    original = ClassTokenOriginal().double().eval()
    weights = harness.map_weights(port.double().eval(), original, x, **options)
    weights.transfer(original, port)
    return port, original, weights, x


def _compared(port_class, forward, **options):
    port, original, weights, x = _ported(port_class(), **options)
    inject_forward(port.embeddings, forward)
    return harness.compare(port, original, x, weights=weights, **options)


def test_map_pairs_the_embeddings_table_with_the_roots():
    port, original, weights, x = _ported(Port())
    assert weights.verified, f"the map should verify: {weights}"
    assert any(e.candidate == "embeddings.table" and e.reference == ("pos",) for e in weights.entries), str(weights)


def test_embeddings_that_no_longer_add_their_table_are_the_culprit_not_the_root():
    report = _compared(Port, _without_table)
    assert not report.passed
    assert (report.first_divergence, report.culprit) == ("embeddings", "embeddings"), report.format()


def test_why_of_the_left_out_add_names_the_table_it_reads():
    report = _compared(Port, _without_table)
    first = report.diagnosis[0] if report.diagnosis else {}
    assert (first.get("module"), first.get("kind"), first.get("op")) == ("embeddings", "missing_op", "add"), \
        findings_text(report.diagnosis)
    assert first["reads"] == ["pos"] and "add by pos missing" in first["text"], findings_text(report.diagnosis)


def test_features_through_reference_call_explain_an_untwinned_embeddings():
    report = _compared(PortFeatures, _table_reversed, **FEATURES)
    assert report.culprit == "embeddings", report.format()
    assert report.diagnosis and report.diagnosis[0]["module"] == "embeddings" and \
        "operand table" in report.diagnosis[0]["text"] and "another layout" in report.diagnosis[0]["text"], \
        findings_text(report.diagnosis)


def test_reference_call_why_stops_at_the_first_op_the_embeddings_left_out():
    report = _compared(PortFeatures, _without_table, **FEATURES)
    missing = [f for f in report.diagnosis if f["kind"] == "missing_op"]
    assert [f["op"] for f in missing] == ["add"], findings_text(report.diagnosis)


def test_a_table_holder_the_port_never_calls_is_not_blamed():
    def skips_embeddings(self, x):
        tokens = torch.cat([self.embeddings.class_token.expand(len(x), -1, -1), self.embeddings.proj(x)], 1)
        return self.classifier(self.final_norm(tokens + torch.tanh(self.mix(tokens)))[:, 0])

    port, original, weights, x = _ported(Port())
    inject_forward(port, skips_embeddings)
    report = harness.compare(port, original, x, weights=weights)
    assert not report.passed and report.culprit != "embeddings", report.format()


class LookupEmbeddings(Embeddings):
    """The table in an ``nn.Embedding`` looked up by position ids, as transformers' SigLIP holds it."""

    def __init__(self) -> None:
        super().__init__()
        del self.table
        self.positions = nn.Embedding(N + 1, D)
        self.register_buffer("ids", torch.arange(N + 1)[None], persistent=False)

    def forward(self, x):
        return torch.cat([self.class_token.expand(len(x), -1, -1), self.proj(x)], 1) + self.positions(self.ids)


class LookupPort(Port):
    def __init__(self) -> None:
        super().__init__()
        self.embeddings = LookupEmbeddings()


def test_embeddings_that_no_longer_add_a_looked_up_table_are_the_culprit_not_the_lookup():
    report = _compared(LookupPort, _without_table)
    assert report.culprit == "embeddings", report.format()
