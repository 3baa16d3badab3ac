"""A map whose twins differ in a setting no weight can fix (a norm's eps) is checked at the cost of
one comparison: the reference's own narrowing is looked for once, and no second, diagnosing run is
made, since the setting itself is the conflict."""

from __future__ import annotations

import pytest

import harness
from harness import api, noise
from port_toys import FusedBlock, SplitBlock, randomized, tokens


@pytest.fixture
def counted(monkeypatch):
    """Counts of the comparisons a map's verification makes, and of the reference's widened runs."""
    counts = {"compare": 0, "widened": 0}
    compare, measure = api._compare, noise.NoiseFloor.measure.__func__

    def counting_compare(*args, **kwargs):
        counts["compare"] += 1
        return compare(*args, **kwargs)

    def counting_measure(cls, *args, **kwargs):
        counts["widened"] += bool(kwargs.get("widen"))
        return measure(cls, *args, **kwargs)

    monkeypatch.setattr(api, "_compare", counting_compare)
    monkeypatch.setattr(noise.NoiseFloor, "measure", classmethod(counting_measure))
    return counts


def eps_conflict() -> harness.WeightMap:
    candidate, reference = randomized(FusedBlock(eps=1e-3), 1), randomized(SplitBlock(), 2)
    return harness.map_weights(candidate, reference, tokens())


def test_a_conflict_of_settings_alone_costs_one_comparison(counted):
    weights = eps_conflict()
    assert "eps" in weights.conflicts[0]["text"], str(weights)
    assert counted["compare"] == 1, (f"{counted['compare']} comparisons for a map whose only conflict is an eps; "
                                     f"the setting names the conflict without a diagnosing run")


def test_the_reference_is_run_widened_once_per_verification(counted):
    eps_conflict()
    assert counted["widened"] <= 1, (f"the reference's float64 run was widened {counted['widened']} times; "
                                     f"one run tells whether it narrows anything")
