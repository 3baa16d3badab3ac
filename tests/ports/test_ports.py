"""Ports between independent public implementations: weights and twins found without names.

Each pair in ``port_pairs.PAIRS`` is two libraries' implementations of one architecture. With no
rename rule and no hand-written mapping, ``harness.map_weights`` must give every parameter that has
a counterpart its reference value; after ``weights.transfer`` the port must pass in float64; and a
single broken module of the port -- a perturbed weight, a norm eps, an activation variant, or a
library default that really differs -- must be named as the culprit, exactly; and two independent
bugs must both be listed in ``report.introduced``, in execution order.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import harness
from harness.plugin import PROPERTY
from port_pairs import BUGS, BY_NAME, PAIRS, PortPair

PAIR_NAMES = [p.name for p in PAIRS]
DEFAULT_NAMES = [p.name for p in PAIRS if p.default_culprit]
BUG_CASES = [pytest.param(p.name, kind, id=f"{p.name}-{kind}") for p in PAIRS for kind in BUGS]
# buffers that carry learned state; every other buffer is computed by its own model
LEARNED_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def map_weights(pair: PortPair, candidate: nn.Module, reference: nn.Module, inputs) -> harness.WeightMap:
    return harness.map_weights(candidate, reference, inputs, **pair.compare_kwargs)


@functools.cache
def clean_map(name: str) -> harness.WeightMap:
    """The map of the pair as built (one per process: the builds are deterministic)."""
    pair = BY_NAME[name]
    return map_weights(pair, *pair.build())


def ported(pair: PortPair, weights: harness.WeightMap, **build) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    candidate, reference, inputs = pair.build(**build)
    weights.transfer(reference, candidate)
    return candidate, reference, inputs


def compare(pair: PortPair, candidate: nn.Module, reference: nn.Module, inputs, weights) -> harness.ParityReport:
    return harness.compare(candidate, reference, inputs, weights=weights, pair_name=pair.name, **pair.compare_kwargs)


def parameter_keys(model: nn.Module) -> set[str]:
    return {k for k, _ in model.named_parameters()}


def unmatched_text(weights: harness.WeightMap, side: str) -> str:
    keys = weights.unmatched[side]
    return "\n".join(f"  {k}: {weights.reasons.get(k, '(no reason given)')}" for k in keys) or "  (none)"


def blame_text(report: harness.ParityReport, expected: str) -> str:
    return (f"expected the culprit {expected!r}, got {report.culprit!r} "
            f"(introduced: {getattr(report, 'introduced', None)})\n{report.format()}")


# -- the weight map ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PAIR_NAMES)
def test_map_gives_every_candidate_parameter_with_a_counterpart_a_reference_value(name):
    pair = BY_NAME[name]
    weights = clean_map(name)
    candidate, _, _ = pair.build()
    fed = {e.candidate for e in weights.entries}
    missing = sorted(parameter_keys(candidate) - fed - set(pair.no_counterpart))
    assert not missing, (
        f"{name}: coverage {weights.coverage:.4f}; candidate parameters without a reference value {missing}\n"
        f"unmatched candidate keys:\n{unmatched_text(weights, 'candidate')}\n{weights}")


@pytest.mark.parametrize("name", PAIR_NAMES)
def test_map_uses_every_reference_parameter_with_a_counterpart(name):
    pair = BY_NAME[name]
    weights = clean_map(name)
    _, reference, _ = pair.build()
    used = {key for e in weights.entries for key in e.reference}
    unused = sorted(parameter_keys(reference) - used - set(pair.no_counterpart))
    assert not unused, (
        f"{name}: reference parameters that feed no candidate tensor {unused}\n"
        f"unmatched reference keys:\n{unmatched_text(weights, 'reference')}\n{weights}")


@pytest.mark.parametrize("name", PAIR_NAMES)
def test_map_table_names_every_tensor_it_does_not_copy(name):
    pair = BY_NAME[name]
    weights = clean_map(name)
    candidate, reference, _ = pair.build()
    table = str(weights)
    fed = {e.candidate for e in weights.entries}
    used = {key for e in weights.entries for key in e.reference}
    silent = [f"candidate {k}" for k in candidate.state_dict() if k not in fed and k not in table]
    silent += [f"reference {k}" for k in reference.state_dict() if k not in used and k not in table]
    assert not silent, f"{name}: tensors neither mapped nor listed in the table: {silent}\n{table}"


@pytest.mark.parametrize("name", PAIR_NAMES)
def test_map_copies_no_buffer_that_a_model_computes_itself(name):
    pair = BY_NAME[name]
    candidate, _, _ = pair.build()
    parameters = parameter_keys(candidate)
    copied = [e.candidate for e in clean_map(name).entries
              if e.candidate not in parameters and not e.candidate.endswith(LEARNED_BUFFERS)]
    assert not copied, f"{name}: computed buffers overwritten from the reference: {copied}\n{clean_map(name)}"


@pytest.mark.parametrize("name", PAIR_NAMES)
def test_map_is_verified_by_running_both_models(name):
    weights = clean_map(name)
    assert weights.verified, f"{name}: the inferred map was not verified\n{weights}"


# -- the transferred port -------------------------------------------------------------------------

@pytest.mark.parity  # the ports' rows in the parity report; the rest of this suite runs in the full test run
@pytest.mark.parametrize("name", PAIR_NAMES)
def test_transferred_port_passes_in_float64(name, request):
    pair = BY_NAME[name]
    weights = clean_map(name)
    report = compare(pair, *ported(pair, weights), weights)
    # a row of the parity report (--report), like every registered pair's comparison
    request.node.user_properties.append((PROPERTY, {**report.to_dict(), "status": "pass" if report.passed else "fail"}))
    assert report.passed, f"{name}: the transferred port fails\n{report.format()}\n{weights}"


@pytest.mark.parametrize("name", DEFAULT_NAMES)
def test_library_default_that_really_differs_is_blamed_on_the_module_that_differs(name):
    pair = BY_NAME[name]
    candidate, reference, inputs = pair.build(keep_defaults=True)
    weights = map_weights(pair, candidate, reference, inputs)
    weights.transfer(reference, candidate)
    report = compare(pair, candidate, reference, inputs, weights)
    assert report.culprit == pair.default_culprit, (
        f"{name} ({pair.default_difference}): " + blame_text(report, pair.default_culprit))


# -- injected single-module bugs -------------------------------------------------------------------

@pytest.mark.parametrize(("name", "kind"), BUG_CASES)
def test_injected_bug_is_blamed_on_exactly_the_changed_module(name, kind):
    pair = BY_NAME[name]
    inject = BUGS[kind]
    if kind == "weight":
        # a transfer would overwrite the perturbed weight: perturb the transferred port
        weights = clean_map(name)
        candidate, reference, inputs = ported(pair, weights)
        changed = inject(candidate, pair.bugs[kind])
    else:
        # a port that carries the bug is what its author maps
        candidate, reference, inputs = pair.build()
        changed = inject(candidate, pair.bugs[kind])
        weights = map_weights(pair, candidate, reference, inputs)
        weights.transfer(reference, candidate)
    report = compare(pair, candidate, reference, inputs, weights)
    assert report.culprit == changed, f"{name}, {kind} bug in {changed}: " + blame_text(report, changed)


def execution_order(model: nn.Module, inputs, names: set[str]) -> list[str]:
    """``names`` sorted by the first call of each module in one forward of ``model``."""
    seen: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda *_, n=n: seen.append(n) if n not in seen else None)
             for n, m in model.named_modules() if n in names]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("name", PAIR_NAMES)
def test_two_independent_bugs_are_both_listed_where_they_are_introduced(name):
    pair = BY_NAME[name]
    weights = clean_map(name)
    candidate, reference, inputs = ported(pair, weights)
    changed = {BUGS["eps"](candidate, pair.bugs["eps"]), BUGS["weight"](candidate, pair.bugs["weight"])}
    expected = execution_order(candidate, inputs, changed)
    report = compare(pair, candidate, reference, inputs, weights)
    assert list(report.introduced) == expected, (
        f"{name}: bugs in {expected} (execution order), report.introduced is {list(report.introduced)}\n"
        f"{report.format()}")
