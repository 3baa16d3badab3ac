"""harness.checks: a wrong type is a TypeError, a bad value a ValueError; both say expected, got, fix."""

import math

import pytest
import torch
from torch import nn

from harness.checks import (check_choice, check_int, check_module, check_number, check_type, check_value,
                            type_error)


def test_a_wrong_type_names_the_expected_and_the_received_type():
    with pytest.raises(TypeError, match=r"^rename must be a list or tuple, got str 'abc'$"):
        check_type("rename", "abc", (list, tuple))


def test_a_type_error_carries_the_fix():
    with pytest.raises(TypeError, match=r"got int 3; pass a regex string$"):
        check_type("include", 3, str, fix="pass a regex string")


def test_an_accepted_value_is_returned_unchanged():
    value = [("a", "b")]
    assert check_type("rename", value, list) is value


def test_a_bool_is_not_an_int_unless_bool_is_expected():
    with pytest.raises(TypeError, match=r"depth must be an int >= 0, got bool True"):
        check_int("depth", True, minimum=0)
    assert check_type("flag", True, (bool, int)) is True


def test_an_int_below_its_minimum_is_a_value_error():
    with pytest.raises(ValueError, match=r"^Config.width must be an int >= 1, got 0$"):
        check_int("Config.width", 0, minimum=1)


def test_a_number_is_returned_as_a_float():
    assert check_number("eps", 1, above=0) == 1.0 and isinstance(check_number("eps", 1, above=0), float)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_a_number_out_of_range_or_not_finite_is_a_value_error(bad):
    with pytest.raises(ValueError, match=r"eps must be a finite number > 0, got"):
        check_number("eps", bad, above=0)


def test_a_failed_value_check_quotes_the_value():
    with pytest.raises(ValueError, match=r"^side must be a side name, got 'left'; use candidate or reference$"):
        check_value("side", "left", False, expected="a side name", fix="use candidate or reference")


def test_an_unknown_choice_lists_the_choices_and_the_closest_one():
    with pytest.raises(ValueError, match=r"mode must be one of 'full', 'summary', 'auto', got 'sumary'; "
                                         r"did you mean 'summary'\?"):
        check_choice("mode", "sumary", ("full", "summary", "auto"))


def test_a_module_check_rejects_a_function():
    with pytest.raises(TypeError, match=r"^candidate must be an nn.Module, got function$"):
        check_module("candidate", lambda: None)
    assert isinstance(check_module("candidate", nn.Identity()), nn.Identity)


def test_long_values_are_cut_in_messages():
    with pytest.raises(ValueError) as info:
        check_value("name", "x" * 500, False, expected="short")
    assert len(str(info.value)) < 120, str(info.value)


def test_a_torch_dtype_is_quoted_in_a_type_error():
    assert str(type_error("dtype", torch.int32, "a floating torch.dtype")) == \
        "dtype must be a floating torch.dtype, got dtype torch.int32"


def test_a_short_container_is_quoted_in_a_type_error():
    assert str(type_error("a rename rule", ["^a$"], "a (regex, replacement) pair")) == \
        "a rename rule must be a (regex, replacement) pair, got list ['^a$']"
