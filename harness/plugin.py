"""pytest plugin (entry point ``parity_harness``): markers, options, fixtures, accumulating reports.

Options:
    --report              merge this run's parity results into <report-dir>/parity.json (schema 1),
                          append a line to history.jsonl, render index.html, pairs/*.html, dashboard.html
    --report-dir DIR      where (default: reports/ under the rootdir)
    --report-fresh        start the report over instead of merging into it (history is kept)
    --shard i/n           run only the tests of shard i of n (stable: a hash of the test id)
    --nightly             also run tests marked ``nightly`` (full sizes, fp64 sweeps)
    --update-goldens      rewrite golden files instead of diffing against them

Fixtures:
    parity_check(pair, dtype=torch.float64, **kw) -> ParityReport   (fails with the report table)
    golden(name, value, atol=0, rtol=0)                            (diffs against tests/goldens)

Results are keyed by (test, pair, dtype) and stamped with their run (time, commit, selection), so
runs of different selections accumulate in one report; a run that executed no parity test leaves
the report as it was and says so. A parity test that raises before its comparison finished is an
``error`` result carrying the exception. Results travel as test-report user properties, so those
of pytest-xdist workers reach the controller, which alone writes the files.

Pairs built in a row are built from the last one's reference weights when they are the same pair
(:func:`harness.pairs.reuse_references`): a parity test per dtype pays the upstream
initialization of a big model once.

In the terminal, a failing parity test's short-summary line names its culprit; the failures whose
culprits share a pattern (digits as ``*``: ``stages.*.blocks.*.norm``) print one table between
them and are listed together in the ``parity`` section.
"""

from __future__ import annotations

import json
import os
import re
import traceback
from pathlib import Path
from typing import Any

import pytest

# OpenMP threads spin-wait for work by default; on shared or busy cores the spinning takes the CPU
# that the working threads and other jobs need (ConvNeXt-T forwards on 2 threads of 2 loaded cores:
# 8x the time and 9x the CPU of passive waiting). libgomp reads this once, when torch loads it, so
# this module imports torch only inside the hooks that run tests: a pytest-xdist controller, which
# runs none, starts without it (3 s of every parallel run's start-up, before any worker starts).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PROPERTY = "parity_result"
MARKERS = {
    "parity": "layer-by-layer comparison of a candidate with its reference",
    "property": "hypothesis property test",
    "golden": "diff against a golden file (regenerate with --update-goldens)",
    "bench": "pytest-benchmark speed/memory benchmark (tox -e bench)",
    "nightly": "full-size or long check; runs only with --nightly (tox -e nightly)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("parity", "parity harness")
    group.addoption("--report", action="store_true",
                    help="merge parity results into parity.json and render index.html, pair pages, dashboard")
    group.addoption("--report-dir", default=None, help="report folder (default: <rootdir>/reports)")
    group.addoption("--report-fresh", action="store_true",
                    help="with --report: start the report over instead of merging into the existing one")
    group.addoption("--shard", default=None, metavar="i/n",
                    help="run only shard i of n (1-based; tests are assigned by a stable hash of their id)")
    group.addoption("--nightly", action="store_true", help="also run tests marked nightly")
    group.addoption("--update-goldens", action="store_true", help="rewrite golden files")


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if config.getoption("--shard"):
        from harness.runs import parse_shard

        try:
            parse_shard(config.getoption("--shard"))
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    config.pluginmanager.register(ParityCollector(config), "parity_collector")
    if _xdist_controller(config):
        return
    _share_cores()
    # parity tests build each pair at several dtypes in a row: the second build skips the upstream init
    from harness.pairs import reuse_references

    reuse_references(True)


def _xdist_controller(config: pytest.Config) -> bool:
    """Whether this process hands the tests to pytest-xdist workers instead of running them."""
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", None))


def _share_cores() -> None:
    """Give each pytest-xdist worker its share of the cores (torch takes them all in every worker),
    unless OMP_NUM_THREADS says otherwise."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--shard"):
        from harness.runs import parse_shard, shard_of

        i, n = parse_shard(config.getoption("--shard"))
        keep = [item for item in items if shard_of(item.nodeid, n) == i]
        dropped = [item for item in items if shard_of(item.nodeid, n) != i]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    if config.getoption("--nightly"):
        return
    skip = pytest.mark.skip(reason="nightly: full-size check, run with --nightly (tox -e nightly)")
    for item in items:
        if "nightly" in item.keywords:
            item.add_marker(skip)


def _error_result(test: str, pair: Any, dtype: Any, exc: BaseException | None, text: str | None) -> dict[str, Any]:
    if exc is not None:
        from harness.guards import ForwardFailed

        # a model's forward that raised: the row names the model's own error, and which side raised it
        side = exc.side if isinstance(exc, ForwardFailed) else None
        own = exc.__cause__ if side is not None and exc.__cause__ is not None else exc
        error = {"type": type(own).__name__, "message": str(own),
                 "traceback": "".join(traceback.format_exception(exc, limit=-8))[-6000:]}
        if side is not None:
            error["side"] = side
    else:
        lines = [line for line in (text or "").strip().splitlines() if line.strip()]
        last = lines[-1] if lines else "the test failed before its comparison finished"
        kind, _, message = last.lstrip("E ").partition(": ")
        error = {"type": kind if message else "Error", "message": message or last, "traceback": (text or "")[-6000:]}
    return {"test": test, "pair": pair, "dtype": dtype, "device": None, "passed": False, "status": "error",
            "error": error, "first_divergence": None, "culprit": None}


@pytest.fixture
def parity_check(request: pytest.FixtureRequest):
    """Compare a registered pair; record the result (or the exception) for --report; fail with the report."""
    import torch

    from harness.api import compare_pair
    from harness.metrics import dtype_name

    def check(pair: Any, *, dtype: torch.dtype = torch.float64, **kwargs: Any):
        name = pair if isinstance(pair, str) else getattr(pair, "name", None)
        try:
            report = compare_pair(pair, dtype=dtype, **kwargs)
        except Exception as exc:
            try:
                dtype_label = dtype_name(dtype)
            except (ValueError, TypeError):
                dtype_label = str(dtype)
            request.node.user_properties.append(
                (PROPERTY, _error_result(request.node.nodeid, name, dtype_label, exc, None)))
            raise
        request.node.user_properties.append((PROPERTY, {**report.to_dict(), "status": "pass" if report.passed else "fail"}))
        if not report.passed:
            pytest.fail(_headline(report.to_dict()) + "\n" + report.format(), pytrace=False)
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


def _headline(result: dict[str, Any]) -> str:
    """The first line of a parity failure, which pytest's short summary shows: where it starts."""
    o = result.get("output") or {}
    return (f"culprit {result.get('culprit') or '(not localized)'}: {result.get('pair')}[{result.get('dtype')}] FAIL, "
            f"first divergence {result.get('first_divergence') or '(none in aligned layers)'}, "
            f"output rel_l2 {o.get('rel_l2', float('nan')):.3g}")


def culprit_pattern(culprit: str | None) -> str:
    """The culprit with indices as ``*``: one bug repeated in every block shares one pattern."""
    return re.sub(r"(?<![A-Za-z])\d+(?![A-Za-z])", "*", culprit) if culprit else "(not localized)"


class _Crash:
    def __init__(self, original: Any, message: str) -> None:
        self.path = getattr(original, "path", "")
        self.lineno = getattr(original, "lineno", 0)
        self.message = message


class _ParityLongrepr:
    """A parity failure's long report: the full text, or a pointer to the failure that printed the
    table for the same culprit pattern; its crash message is the one-line headline."""

    def __init__(self, original: Any, headline: str, replacement: str | None) -> None:
        self.original, self.replacement = original, replacement
        self.reprcrash = _Crash(getattr(original, "reprcrash", None), headline)

    def toterminal(self, tw: Any) -> None:
        if self.replacement is None:
            self.original.toterminal(tw)
        else:
            for line in self.replacement.splitlines():
                tw.line(line)

    def __str__(self) -> str:
        return self.replacement if self.replacement is not None else str(self.original)


class ParityCollector:
    """Collects parity results (from this process or, under xdist, from every worker)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results: list[dict[str, Any]] = []
        self.tables: dict[str, str] = {}  # culprit pattern -> the test whose failure printed the table
        self.message: list[str] = []

    # -- collecting --------------------------------------------------------------------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when not in ("setup", "call") or (report.when == "setup" and not report.failed):
            return  # results are taken once: from the call phase, or from a setup that failed
        mine = [dict(value, test=report.nodeid) for key, value in report.user_properties if key == PROPERTY]
        self.results.extend(mine)
        if report.failed and not mine and "parity" in report.keywords:
            # a parity test that raised outside parity_check (or in a fixture): an error row, never a gap
            self.results.append(_error_result(report.nodeid, None, None, None, report.longreprtext))
        failed = [r for r in mine if r.get("status") == "fail"]
        if hasattr(self.config, "workerinput"):
            return  # under xdist the controller, which sees every worker's failures, shortens them
        if report.failed and failed and report.longrepr is not None and not isinstance(report.longrepr, str):
            result = failed[0]
            pattern = culprit_pattern(result.get("culprit"))
            first = self.tables.setdefault(pattern, report.nodeid)
            replacement = None
            if first != report.nodeid:
                replacement = (_headline(result) + "\n" + f"(same culprit pattern {pattern} as {first}, whose "
                               f"failure above shows the table; run this test alone for its own, or see the pair page with --report)")
            report.longrepr = _ParityLongrepr(report.longrepr, _headline(result), replacement)

    # -- writing -----------------------------------------------------------------------------
    def _why_partial(self, session: pytest.Session, exitstatus: int) -> list[str]:
        config, option = self.config, self.config.option
        why = []
        if getattr(option, "keyword", ""):
            why.append(f"-k {option.keyword}")
        if getattr(option, "markexpr", ""):
            why.append(f"-m {option.markexpr}")
        if config.args_source == pytest.Config.ArgsSource.ARGS:
            testpaths = [str(Path(config.rootpath) / p) for p in config.getini("testpaths")]
            given = [str(Path(config.invocation_params.dir) / a) for a in config.args]
            if sorted(given) != sorted(testpaths):
                why.append("selected " + " ".join(config.args))
        if getattr(option, "deselect", None):
            why.append("--deselect")
        if getattr(option, "lf", False):
            why.append("--lf")
        if getattr(option, "stepwise", False):
            why.append("--sw")
        if config.getoption("--shard"):
            why.append(f"shard {config.getoption('--shard')}")
        if exitstatus == pytest.ExitCode.INTERRUPTED or session.shouldstop or session.shouldfail:
            why.append("stopped early")
        return why

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        config = self.config
        if hasattr(config, "workerinput") or not config.getoption("--report"):
            return
        from harness import runs
        from harness.pages import render
        from harness.files import atomic_write_text
        from harness.report import document

        directory = Path(config.getoption("--report-dir") or Path(config.rootpath) / "reports")
        target = directory / "parity.json"
        if not self.results:
            self.message.append(f"parity report not written: this run executed no parity test; {target} left as it was")
            return
        stamp = runs.run_stamp(commit=runs.commit_of(config.rootpath),
                               selection=" ".join(config.invocation_params.args),
                               shard=config.getoption("--shard"), why_partial=self._why_partial(session, exitstatus))
        devices = [r["device"] for r in self.results if r.get("device")]
        new = document([dict(r, run=stamp) for r in self.results], device=devices[0] if devices else "cpu")
        new["runs"] = [dict(stamp, environment=new["environment"])]  # pair pages show the run's own
        docs = [new]
        if target.exists() and not config.getoption("--report-fresh"):
            try:
                docs.insert(0, runs.load_document(target))
            except (ValueError, OSError) as exc:
                aside = target.with_name(f"parity.json.unreadable-{stamp['id']}")
                target.replace(aside)
                self.message.append(f"{exc}; kept it as {aside} and started a new report")
        doc = runs.merge_documents(docs)
        doc["environment"] = new["environment"]
        atomic_write_text(target, json.dumps(doc, indent=1, allow_nan=False))
        history = directory / "history.jsonl"
        runs.append_history(history, runs.history_entry(stamp, new["results"], new["environment"]))
        render(directory, doc, runs.read_history(history))
        kept = len(doc["results"]) - len(new["results"])
        count = len(new["results"])
        self.message.append(f"parity report: {target} ({count} result{'s' * (count != 1)} from this run"
                            + (f", {kept} kept from earlier runs" if kept > 0 else "") + f"), "
                            f"{directory / 'index.html'}, {directory / 'dashboard.html'}")

    # -- terminal ----------------------------------------------------------------------------
    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int) -> None:
        if hasattr(self.config, "workerinput") or not (self.results or self.message):
            return
        from harness.runs import status

        write = terminalreporter.write_line
        terminalreporter.section("parity")
        counts = {s: [r for r in self.results if status(r) == s] for s in ("pass", "fail", "error")}
        passed = counts["pass"]
        if passed:
            worst = max(passed, key=lambda r: float((r.get("output") or {}).get("rel_l2") or 0))
            write(f"PASS  {len(passed)} comparison{'s' * (len(passed) != 1)}; largest output rel_l2 "
                  f"{float((worst.get('output') or {}).get('rel_l2') or 0):.3g} ({worst.get('pair')}[{worst.get('dtype')}])")
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in counts["fail"]:
            groups.setdefault(culprit_pattern(r.get("culprit")), []).append(r)
        for pattern, members in sorted(groups.items(), key=lambda g: -len(g[1])):
            names = ", ".join(f"{r.get('pair')}[{r.get('dtype')}]" for r in members[:8])
            more = f" (+{len(members) - 8} more)" if len(members) > 8 else ""
            write(f"FAIL  {len(members)} comparison{'s' * (len(members) != 1)} with culprit {pattern}: {names}{more}")
        errors: dict[str, list[dict[str, Any]]] = {}
        for r in counts["error"]:
            e = r.get("error") or {}
            errors.setdefault(f"{e.get('type')}: {str(e.get('message', '')).splitlines()[:1]}", []).append(r)
        for what, members in errors.items():
            write(f"ERROR {len(members)} raised before the comparison finished, {what.replace('[', '').replace(']', '')}: "
                  + ", ".join(str(r.get("test")) for r in members[:5]) + (" ..." if len(members) > 5 else ""))
        for line in self.message:
            write(line)
