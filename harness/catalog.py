"""Lazy declarations: pair names, tags and descriptions, and CLI commands, known before anything heavy loads.

Building a pair needs torch, the candidates and the reference libraries (timm, transformers);
listing pairs needs none of them. A family declares each pair with
``register_lazy(name, tags=..., description=..., loader="reference.convnext")``: the loader is
the module whose import registers the full :class:`harness.Pair` (or a callable doing so), and
:func:`harness.get_pair` runs it the first time the pair is asked for. Commands are declared the
same way with :func:`register_lazy_command`; the CLI imports a command's module only when that
command runs. This module imports nothing beyond the standard library.

Pair definitions are found through the ``parity_harness.pairs`` entry-point group
(:func:`load_entry_points`); a group member that declares its pairs lazily costs an import of
a small module, one that registers full pairs costs what that module imports.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

from harness.checks import check_type, check_value, type_error
from importlib import metadata
from typing import Callable, Iterable

__all__ = ["LazyPair", "LazyCommand", "register_lazy", "register_lazy_command", "lazy_pairs", "lazy_commands",
           "load_entry_points", "load"]

ENTRY_POINT_GROUP = "parity_harness.pairs"


@dataclass(frozen=True)
class LazyPair:
    """What ``list`` prints about a pair, and how to build it (``loader``: a module name or a callable)."""

    name: str
    tags: frozenset[str]
    description: str
    loader: str | Callable[[], object]


@dataclass(frozen=True)
class LazyCommand:
    """A ``python -m harness NAME`` command whose module registers it in full on import."""

    name: str
    help: str
    module: str


_PAIRS: dict[str, LazyPair] = {}
_COMMANDS: dict[str, LazyCommand] = {}
_LOADED_MODULES: set[str] = set()
_ENTRY_POINTS_LOADED = False


def check_pair_name(name: str) -> str:
    """``name`` if it can name a pair (a file name and a command-line word), else a ValueError."""
    check_type("pair name", name, str)
    return check_value("pair name", name, re.fullmatch(r"[A-Za-z0-9_.\-]+", name) is not None,
                       expected="letters, digits, '_', '.', '-'", fix="e.g. convnext_tiny")


def register_lazy(
    name: str, *, tags: Iterable[str] = (), description: str = "", loader: str | Callable[[], object]
) -> LazyPair:
    """Declare pair ``name``; ``loader`` (module name or callable) registers the full pair when first needed."""
    check_pair_name(name)
    if isinstance(tags, str):
        raise type_error("tags", tags, "an iterable of strings such as {'nightly'}", fix=f"write {{{tags!r}}}")
    if not (isinstance(loader, str) or callable(loader)):
        raise type_error("loader", loader, "a module name or a callable registering the pair")
    entry = LazyPair(name, frozenset(tags), description, loader)
    if name in _PAIRS and _PAIRS[name] != entry:
        raise ValueError(f"a pair named {name!r} is already declared (by {_PAIRS[name].loader!r})")
    _PAIRS[name] = entry
    return entry


def register_lazy_command(name: str, *, help: str, module: str) -> LazyCommand:
    """Declare ``python -m harness NAME``, registered in full (``harness.cli.register_command``) by ``module``."""
    entry = LazyCommand(name, help, module)
    if name in _COMMANDS and _COMMANDS[name] != entry:
        raise ValueError(f"a command named {name!r} is already declared (by module {_COMMANDS[name].module})")
    _COMMANDS[name] = entry
    return entry


def lazy_pairs() -> dict[str, LazyPair]:
    """Every declared pair by name (entry points loaded first)."""
    load_entry_points()
    return dict(_PAIRS)


def lazy_commands() -> dict[str, LazyCommand]:
    """Every declared command by name (entry points loaded first)."""
    load_entry_points()
    return dict(_COMMANDS)


def load(name: str) -> None:
    """Run the loader of declared pair ``name`` (importing a module once)."""
    loader = _PAIRS[name].loader
    if callable(loader):
        loader()
    elif loader not in _LOADED_MODULES:
        importlib.import_module(loader)
        _LOADED_MODULES.add(loader)


def load_all() -> None:
    """Run every declared pair's loader (each module once)."""
    for name in list(lazy_pairs()):
        load(name)


def load_entry_points() -> None:
    """Import every module of the ``parity_harness.pairs`` entry-point group, once."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        ep.load()
