"""Lazy package exports: a family package names its public objects without importing their modules.

Python imports a package before any of its submodules, so a family ``__init__.py`` that imported
its model files would load torch for ``candidates.<family>.convert`` too, and recognition
(``python -m harness inspect``) must run without torch. This lives in a module of its own rather
than in ``candidates/__init__.py`` because the test folder ``tests/candidates`` can shadow the
``candidates`` package itself under pytest (a namespace package found first on ``sys.path``),
while its submodules still resolve.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping, Sequence

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """(``__getattr__``, ``__dir__``, ``__all__``) for a package that exports ``{module: names}`` lazily.

    A name is imported from its module on first access (PEP 562) and then kept on the package,
    so ``from candidates.convnext import ConvNeXt`` works as with eager imports, but importing the
    package itself (which Python does before any of its submodules) loads nothing.
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, sorted(where)
