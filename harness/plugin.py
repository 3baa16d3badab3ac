"""pytest plugin (entry point ``parity_harness``): markers, options, fixtures, report writing.

Options:
    --report              write <report-dir>/parity.json (schema 1) and <report-dir>/index.html
    --report-dir DIR      where (default: reports/ under the rootdir)
    --nightly             also run tests marked ``nightly`` (full sizes, fp64 sweeps)
    --update-goldens      rewrite golden files instead of diffing against them

Fixtures:
    parity_check(pair, dtype=torch.float64, **kw) -> ParityReport   (fails with the report table)
    golden(name, value, atol=0, rtol=0)                            (diffs against tests/goldens)

Parity results travel as test-report user properties, so rows from pytest-xdist workers reach
the controller, which alone writes the files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

PROPERTY = "parity_result"
MARKERS = {
    "parity": "layer-by-layer comparison of a candidate with its reference",
    "property": "hypothesis property test",
    "golden": "diff against a golden file (regenerate with --update-goldens)",
    "bench": "pytest-benchmark speed/memory benchmark (tox -- -m bench --benchmark-only)",
    "nightly": "full-size or long check; runs only with --nightly (tox -- -n 2 --dist loadgroup --nightly --report)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("parity", "parity harness")
    group.addoption("--report", action="store_true", help="write parity.json and index.html")
    group.addoption("--report-dir", default=None, help="report folder (default: <rootdir>/reports)")
    group.addoption("--nightly", action="store_true", help="also run tests marked nightly")
    group.addoption("--update-goldens", action="store_true", help="rewrite golden files")


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    config.pluginmanager.register(ParityCollector(config), "parity_collector")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--nightly"):
        return
    skip = pytest.mark.skip(reason="nightly: full-size check, run with --nightly (tox -- -n 2 --dist loadgroup --nightly --report)")
    for item in items:
        if "nightly" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def parity_check(request: pytest.FixtureRequest):
    """Compare a registered pair; record the result for --report; fail with the report."""
    from harness.api import compare_pair

    def check(pair: Any, *, dtype: torch.dtype = torch.float64, **kwargs: Any):
        report = compare_pair(pair, dtype=dtype, **kwargs)
        request.node.user_properties.append((PROPERTY, report.to_dict()))
        if not report.passed:
            pytest.fail(report.format(), pytrace=False)
        return report

    return check


@pytest.fixture
def golden(request: pytest.FixtureRequest):
    """``golden(name, value, atol=0, rtol=0)``: diff ``value`` against tests/goldens/<name>.json."""
    from harness.golden import check

    directory = Path(request.config.rootpath) / "tests" / "goldens"
    update = request.config.getoption("--update-goldens")
    regenerate = f"pytest '{request.node.nodeid}' --update-goldens"

    def compare(name: str, value: Any, *, atol: float = 0.0, rtol: float = 0.0) -> Path:
        return check(name, value, directory=directory, atol=atol, rtol=rtol, update=update,
                     regenerate=regenerate)

    return compare


class ParityCollector:
    """Collects parity results (from this process or, under xdist, from every worker)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for key, value in report.user_properties:
            if key == PROPERTY:
                self.results.append({**value, "test": report.nodeid})

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        config = self.config
        if hasattr(config, "workerinput") or not config.getoption("--report"):
            return
        from harness.report import atomic_write_text, document, write_html

        directory = Path(config.getoption("--report-dir") or Path(config.rootpath) / "reports")
        results = sorted(self.results, key=lambda r: (str(r["pair"]), r["dtype"], r["test"]))
        doc = document(results, device=results[0]["device"] if results else "cpu")
        atomic_write_text(directory / "parity.json", json.dumps(doc, indent=1, allow_nan=False))
        write_html(directory / "index.html", doc)
        summary = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": doc["environment"]["versions"],
            "passed": sum(r["passed"] for r in results),
            "total": len(results),
            "failed": sorted({f"{r['pair']}[{r['dtype']}]" for r in results if not r["passed"]}),
        }
        with open(directory / "history.jsonl", "a", encoding="utf-8") as history:
            history.write(json.dumps(summary) + "\n")
        self._written = (directory / "parity.json", directory / "index.html")

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int) -> None:
        if not self.results or hasattr(self.config, "workerinput"):
            return
        terminalreporter.section("parity")
        for r in sorted(self.results, key=lambda r: (str(r["pair"]), r["dtype"])):
            verdict = "PASS" if r["passed"] else "FAIL"
            where = "" if r["passed"] else f"  first divergence {r['first_divergence']}, culprit {r['culprit']}"
            terminalreporter.write_line(
                f"{verdict} {r['pair']:<28} {r['dtype']:<8} output max_abs {r['output']['max_abs']:.3e}  "
                f"{len(r['layers'])} layers{where}")
        if getattr(self, "_written", None):
            terminalreporter.write_line(f"parity report written: {self._written[0]}, {self._written[1]}")
