"""Fixtures of the harness tests: report results of real toy comparisons (see report_toys)."""

import tempfile
from typing import Any

import pytest

from report_toys import toy_results


@pytest.fixture(scope="module")
def passing() -> dict[str, Any]:
    """The toy pair's passing result at float64."""
    return toy_results()[0]


@pytest.fixture(scope="module")
def failing() -> dict[str, Any]:
    """The toy pair's failing result at float64: block 1 without its residual, culprit ``blocks.1``."""
    return toy_results()[1]


@pytest.fixture
def small_auto_spill(tmp_path, monkeypatch):
    """spill="auto" scaled down: 2 MiB blocks, the first one kept in memory, the temp folder ``tmp_path``."""
    from harness import trace

    monkeypatch.setattr(trace._Arena, "BLOCK", 2 * 2**20)
    monkeypatch.setattr(trace, "AUTO_IN_MEMORY", 2 * 2**20)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path
