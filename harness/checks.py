"""Argument checks whose errors say what was expected, what came, and how to fix it.

The convention, for the harness and every model family:

* a value of the wrong *type* raises ``TypeError``; a value of the right type that is out of range,
  unknown or inconsistent raises ``ValueError`` (the CLI prints either on one line and exits 2);
* the message reads ``<name> must be <expected>, got <what came>[; <how to fix it>]``, where
  ``<name>`` is what the user wrote (``ResamplerConfig.depth``, ``--atol``, ``rename``) and
  ``<what came>`` is the type for a type error (``got str 'abc'``) and the value for a value error;
* a check returns the value it accepted, so a field can be checked and normalized in one line
  (``object.__setattr__(self, "eps", check_number("eps", self.eps, above=0))``).

``bool`` is a subclass of ``int`` in Python, but ``True`` is never a depth or a width: the integer
and number checks reject it unless ``bool`` itself is among the expected types.

This module imports nothing heavy (torch is imported only by :func:`check_module`), so the command
line and the pair declarations can use it before any model library loads.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Iterable

__all__ = ["one_line", "check_choice", "check_int", "check_module", "check_number", "check_type", "check_value",
           "describe_type", "describe_value", "is_int_list", "type_error", "value_error"]

_SCALARS = (str, int, float, bool, type(None))
_CONTAINERS = (tuple, list, dict, set, frozenset)
_SHOWN = 60  # characters of a value's repr quoted in a message


def one_line(text: object) -> str:
    """``text`` (an exception's message, say) with every run of whitespace, newlines included, one space:
    what an ``error:`` line or a message quoting another message needs."""
    return " ".join(str(text).split())


def describe_value(value: Any) -> str:
    """``repr(value)``, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def describe_type(value: Any) -> str:
    """The type of ``value`` by name; scalars, short containers and torch's small values (a dtype, a
    device) also by value (``str 'abc'``, ``tuple ('fc', 3)``, ``dtype torch.int32``), as type errors quote them."""
    name = type(value).__name__
    small = isinstance(value, _CONTAINERS) or type(value).__module__ == "torch"
    shown = isinstance(value, _SCALARS) or (small and len(repr(value)) <= _SHOWN)
    return f"{name} {describe_value(value)}" if shown else name


def _message(name: str, expected: str, got: str, fix: str | None) -> str:
    return f"{name} must be {expected}, got {got}" + (f"; {fix}" if fix else "")


def _type_names(types: tuple[type, ...]) -> str:
    names = ["None" if t is type(None) else t.__name__ for t in types]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def type_error(name: str, value: Any, expected: str, *, fix: str | None = None) -> TypeError:
    """The TypeError for a condition :func:`check_type` cannot state (``raise type_error(...)``)."""
    return TypeError(_message(name, expected, describe_type(value), fix))


def value_error(name: str, value: Any, expected: str, *, fix: str | None = None) -> ValueError:
    """The ValueError for a condition :func:`check_value` cannot state (``raise value_error(...)``)."""
    return ValueError(_message(name, expected, describe_value(value), fix))


def check_type(name: str, value: Any, expected: type | tuple[type, ...], *, what: str | None = None,
               fix: str | None = None) -> Any:
    """``value`` if it is an instance of ``expected`` (a type or a tuple of types), else a TypeError.

    ``what`` words the expectation when the type names alone do not (``"a harness.Tolerance"``).
    """
    types = expected if isinstance(expected, tuple) else (expected,)
    rejected_bool = isinstance(value, bool) and bool not in types and not any(t is object for t in types)
    if rejected_bool or not isinstance(value, types):
        raise type_error(name, value, what or f"a {_type_names(types)}", fix=fix)
    return value


def check_value(name: str, value: Any, ok: bool, *, expected: str, fix: str | None = None) -> Any:
    """``value`` if ``ok``, else a ValueError saying what was ``expected`` and what came."""
    if not ok:
        raise value_error(name, value, expected, fix=fix)
    return value


def check_int(name: str, value: Any, *, minimum: int | None = None, fix: str | None = None) -> int:
    """An ``int`` (never a ``bool``), at least ``minimum`` when given."""
    bound = "" if minimum is None else f" >= {minimum}"
    check_type(name, value, int, what=f"an int{bound}", fix=fix)
    return check_value(name, value, minimum is None or value >= minimum, expected=f"an int{bound}", fix=fix)


def check_number(name: str, value: Any, *, minimum: float | None = None, above: float | None = None,
                 fix: str | None = None) -> float:
    """A finite real number (an ``int`` or a ``float``, never a ``bool``), as a float;
    at least ``minimum`` / strictly above ``above`` when given."""
    bounds = [f">= {minimum}"] * (minimum is not None) + [f"> {above}"] * (above is not None)
    expected = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
    check_type(name, value, (int, float), what=expected, fix=fix)
    ok = math.isfinite(value) and (minimum is None or value >= minimum) and (above is None or value > above)
    return float(check_value(name, value, ok, expected=expected, fix=fix))


def is_int_list(value: Any, *, minimum: int | None = None, kinds: tuple[type, ...] = (list, tuple)) -> bool:
    """Whether ``value`` is a list (or another of ``kinds``) of ``int``s, never ``bool``s, each at least
    ``minimum`` when given (``minimum=0``: a shape's sizes). A test rather than a check, for readers of
    a file that word every fault in it their own way (one ValueError, a line naming the problem)."""
    return isinstance(value, kinds) and all(
        isinstance(n, int) and not isinstance(n, bool) and (minimum is None or n >= minimum) for n in value)


def check_choice(name: str, value: Any, choices: Iterable[Any], *, fix: str | None = None) -> Any:
    """``value`` if it is one of ``choices``; the ValueError lists them and names close matches."""
    options = list(choices)
    if value in options:
        return value
    close = difflib.get_close_matches(value, [c for c in options if isinstance(c, str)], n=1) \
        if isinstance(value, str) else []
    hint = f"did you mean {close[0]!r}?" if close else None
    expected = "one of " + ", ".join(describe_value(c) for c in options)
    raise value_error(name, value, expected, fix="; ".join(filter(None, (hint, fix))) or None)


def check_module(name: str, value: Any, *, fix: str | None = None) -> Any:
    """``value`` if it is a ``torch.nn.Module``, else a TypeError."""
    from torch import nn

    return check_type(name, value, nn.Module, what="an nn.Module", fix=fix)
