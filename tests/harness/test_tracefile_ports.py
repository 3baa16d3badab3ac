"""A port against a recorded reference: the weight map pairs modules as with the live reference."""

from __future__ import annotations

import pytest
import torch

import harness
from harness.tracefile import RecordedModel, load_trace, record

from port_toys import ShortcutFirst, ShortcutLast, feature_maps, randomized


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    """(candidate with the reference's weights, reference, inputs, weight map, trace of the reference with weights):
    the shortcut computed first against last, where modules of one shape sit in another order."""
    candidate, reference, x = randomized(ShortcutFirst(), 1), randomized(ShortcutLast(), 2), feature_maps()[:, :4]
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    path = record(reference, x, tmp_path_factory.mktemp("trace") / "ref.trace", weights=True)
    return candidate, reference, x, weights, load_trace(path)


def _pairs(report) -> list[tuple[str, str, str]]:
    return [(row.match.candidate.key, row.match.reference.key, row.status) for row in report.rows]


def test_a_port_compared_with_a_trace_through_its_map_pairs_modules_as_with_the_live_reference(port):
    candidate, reference, x, weights, trace = port
    live = harness.compare(candidate, reference, x, weights=weights)
    replayed = harness.compare(candidate, trace, weights=weights)
    assert _pairs(replayed) == _pairs(live), (
        f"against the trace the map paired {_pairs(replayed)}, against the live reference {_pairs(live)}")


def test_a_port_bug_is_blamed_on_its_twin_against_a_trace_through_the_map(port):
    candidate, reference, x, weights, trace = port
    candidate.layer[2][1].eps = 1e-2
    try:
        report = harness.compare(candidate, trace, weights=weights)
    finally:
        candidate.layer[2][1].eps = 1e-5
    row = next(r for r in report.rows if r.match.candidate.name == report.culprit)
    assert (report.culprit, row.match.reference.name, row.status) == ("layer.2.1", "bn2", "introduced"), \
        f"culprit {report.culprit} paired with {row.match.reference.name} ({row.status})"


def test_the_recorded_model_holds_each_parameter_in_its_recorded_module(port):
    _, reference, _, _, trace = port
    recorded = RecordedModel(trace)
    assert [n for n, _ in recorded.named_modules()] == [n for n, _ in reference.named_modules()]
    assert [(n, p.shape, p.device.type) for n, p in recorded.named_parameters()] == \
        [(n, p.shape, "meta") for n, p in reference.named_parameters()]


def test_the_recorded_model_with_weights_transfers_them_through_a_map_as_the_live_model(port):
    candidate, reference, _, weights, trace = port
    fresh = randomized(ShortcutFirst(), 3)
    weights.transfer(RecordedModel(trace, weights=True), fresh)
    differing = [k for k, v in fresh.state_dict().items() if not torch.equal(v, candidate.state_dict()[k])]
    assert not differing, f"tensors transferred from the trace differ from those from the live model: {differing}"


def test_a_recorded_model_cannot_hold_weights_a_trace_did_not_store(port, tmp_path):
    _, reference, x, _, _ = port
    trace = load_trace(record(reference, x, tmp_path / "bare.trace"))
    with pytest.raises(ValueError, match=r"bare.trace holds no weights: record it again with weights=True"):
        RecordedModel(trace, weights=True)
