"""Fixtures of the harness tests: report results of real toy comparisons (see report_toys)."""

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
