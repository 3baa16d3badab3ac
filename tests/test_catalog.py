"""The lazy declarations (harness.catalog, reference/__init__.py) against the pairs and commands they stand for.

``python -m harness list`` prints pairs from their declarations alone, so a declaration that
drifts from its definition would print something false: every check here compares the two.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import harness
import reference
from harness import catalog, cli
from harness.pairs import _REGISTRY

HEAVY = ("torch", "timm", "transformers", "candidates")


def _defining_module(pair: harness.Pair) -> str:
    return pair.reference.__module__


def test_every_declared_pair_builds_with_its_declared_tags_and_description():
    wrong = []
    for name, entry in catalog.lazy_pairs().items():
        pair = harness.get_pair(name)
        if (pair.tags, pair.description) != (entry.tags, entry.description):
            wrong.append(f"{name}: declared {sorted(entry.tags)} {entry.description!r}, "
                         f"defined {sorted(pair.tags)} {pair.description!r}")
        elif entry.loader != _defining_module(pair):
            wrong.append(f"{name}: declared in {entry.loader}, defined in {_defining_module(pair)}")
    assert not wrong, "declarations in reference/__init__.py differ from the pairs:\n" + "\n".join(wrong)


def test_every_pair_a_reference_module_defines_is_declared():
    for module in pkgutil.iter_modules(reference.__path__):
        importlib.import_module(f"reference.{module.name}")
    declared = catalog.lazy_pairs()
    undeclared = sorted(n for n, p in _REGISTRY.items()
                        if _defining_module(p).startswith("reference.") and n not in declared)
    assert not undeclared, f"pairs missing from reference/__init__.py PAIRS (list would not show them): {undeclared}"


def test_every_declared_command_is_registered_by_its_module_with_the_same_help():
    for name, entry in catalog.lazy_commands().items():
        importlib.import_module(entry.module)
        assert name in cli._COMMANDS, f"{entry.module} does not register the declared command {name!r}"
        assert cli._COMMANDS[name].help == entry.help, f"{name}: declared help differs from the registered one"


def test_list_prints_every_pair_without_importing_torch_or_any_model_library():
    code = ("import sys; from harness.cli import main; rc = main(['list', '-v']); "
            f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules]); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[-1] == "LOADED []", f"python -m harness list imported {lines[-1]}"
    assert len(lines) - 1 == len(harness.list_pairs()), "list printed a different number of pairs than list_pairs()"


def test_a_declared_pair_whose_module_does_not_register_it_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(catalog._PAIRS, "ghost_pair", catalog.LazyPair("ghost_pair", frozenset(), "", lambda: None))
    with pytest.raises(ValueError, match="ghost_pair.*did not register it"):
        harness.get_pair("ghost_pair")


def test_list_pairs_filters_declared_pairs_by_tag_without_building_them(monkeypatch):
    built = []
    monkeypatch.setitem(catalog._PAIRS, "toy_declared", catalog.LazyPair(
        "toy_declared", frozenset({"toy-tag"}), "a toy", lambda: built.append(1)))
    assert harness.list_pairs(tag="toy-tag") == ["toy_declared"]
    assert not built, "list_pairs ran the loader of a declared pair"


def test_register_lazy_rejects_a_bad_name_and_a_string_of_tags():
    with pytest.raises(ValueError, match="pair name"):
        catalog.register_lazy("bad name", loader="reference")
    with pytest.raises(TypeError, match="tags must be an iterable"):
        catalog.register_lazy("fine_name", tags="nightly", loader="reference")
