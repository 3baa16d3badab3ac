"""harness.options: the comparison options travel as one checked, frozen value from a Pair to compare()."""

import dataclasses
import inspect

import pytest
import torch
from harness_toys import RENAME, TOY, TOY_RENAMED

import harness
from harness.metrics import Tolerance
from harness.options import PAIR_OPTIONS, CompareOptions


def test_the_keyword_options_of_compare_are_exactly_the_fields_of_compare_options():
    parameters = inspect.signature(harness.compare).parameters
    options = [n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY and n not in ("dtype", "pair_name")]
    assert sorted(options) == sorted(CompareOptions.names())


def test_every_option_a_pair_declares_is_a_keyword_argument_of_pair():
    pair_fields = {f.name for f in dataclasses.fields(harness.Pair) if f.init}
    assert set(PAIR_OPTIONS) <= pair_fields and set(PAIR_OPTIONS) <= set(CompareOptions.names())


def test_a_pair_gathers_the_options_it_declares():
    assert TOY_RENAMED.options.rename == RENAME
    assert TOY_RENAMED.compare_options() == {name: getattr(TOY_RENAMED, name) for name in PAIR_OPTIONS}


def test_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TOY.options.mode = "summary"  # type: ignore[misc]


def test_replace_checks_the_new_values_again():
    with pytest.raises(ValueError, match=r"mode must be one of 'full', 'summary', 'auto', got 'sumary'"):
        CompareOptions().replace(mode="sumary")


def test_replace_names_an_unknown_option_and_lists_the_known_ones():
    with pytest.raises(TypeError, match=r"unknown comparison option 'tolerance'; the options are rename, tolerances"):
        TOY.options.replace(tolerance={})


def test_a_malformed_pair_option_fails_when_the_pair_is_declared():
    with pytest.raises(TypeError, match=r"reference_call must be a function or None, got str 'pixel_values'"):
        dataclasses.replace(TOY, reference_call="pixel_values")


def test_compare_pair_overrides_one_option_and_keeps_the_pair_s_others():
    tight = {"float64": Tolerance(atol=0.0, rtol=0.0)}
    report = harness.compare_pair(TOY_RENAMED, dtype=torch.float64, tolerances=tight, noise_floor=False)
    assert report.tolerance == tight["float64"], report.tolerance
    hows = {row.match.how for row in report.rows}
    assert hows == {"name", "rename"}, f"the pair's rename rules were dropped by the override: rows paired by {hows}"


def test_compare_pair_rejects_an_unknown_override():
    with pytest.raises(TypeError, match="unknown comparison option 'atol'"):
        harness.compare_pair(TOY, dtype=torch.float64, atol=1e-3)
