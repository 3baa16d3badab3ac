"""The pytest plugin end to end, in a scratch project run by pytester (also under xdist): markers, goldens,
--report runs that accumulate, errors as rows, failures summarized by culprit, --shard splitting a suite."""

import json
from pathlib import Path

import pytest

# Loaded here, so that it outlives the in-process pytester runs: each run drops the modules first
# imported inside it, while the harness package keeps the names it exported (harness.Pair), and a
# Pair class from an earlier run would not be the class compare_pair checks against.
import harness.api  # noqa: F401

TOYS = Path(__file__).with_name("harness_toys.py").read_text()
HELPERS = Path(__file__).parent.parent.joinpath("helpers.py").read_text()  # a subprocess run imports its own copy

TESTS = '''
import pytest, torch
from harness_toys import TOY, drop_residual
from helpers import PARITY_DTYPES

@pytest.mark.parity
@pytest.mark.parametrize("dtype", PARITY_DTYPES)
def test_toy(parity_check, dtype):
    parity_check(TOY, dtype=dtype)

@pytest.mark.parity
@pytest.mark.parametrize("block", [0, 1])
def test_toy_broken(parity_check, block):
    candidate, _ = TOY.build(dtype=torch.float64)
    drop_residual(candidate.blocks[block])
    parity_check(TOY, candidate=candidate)

def _boom(x):
    raise RuntimeError("boom in blocks.0")

@pytest.mark.parity
def test_toy_raises(parity_check):
    candidate, _ = TOY.build(dtype=torch.float64)
    candidate.blocks[0].forward = _boom
    parity_check(TOY, candidate=candidate)

def test_plain():
    pass

@pytest.mark.nightly
def test_big():
    raise AssertionError("nightly tests must not run by default")

def test_golden_value(golden):
    golden("answer", {"value": 42})
'''

CLEAN = "test_toy and not broken and not raises"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(harness_toys=TOYS, helpers=HELPERS, test_scratch=TESTS)
    pytester.syspathinsert()
    return pytester


def _report(project):
    return json.loads((project.path / "reports" / "parity.json").read_text())


def _history(project):
    return [json.loads(line) for line in (project.path / "reports" / "history.jsonl").read_text().splitlines()]


def _keys(doc):
    return sorted((r["test"].split("::")[1], r["pair"], r["dtype"]) for r in doc["results"])


def test_two_selections_accumulate_in_one_report(project):
    project.runpytest("-k", CLEAN, "--report")
    project.runpytest("-k", "broken", "--report")
    doc = _report(project)
    assert _keys(doc) == [("test_toy[float32]", "toy_mlp", "float32"), ("test_toy[float64]", "toy_mlp", "float64"),
                          ("test_toy_broken[0]", "toy_mlp", "float64"), ("test_toy_broken[1]", "toy_mlp", "float64")]
    selections = {r["test"].split("::")[1]: r["run"]["selection"] for r in doc["results"]}
    assert selections["test_toy[float32]"].startswith(f"-k {CLEAN} --report")
    assert selections["test_toy_broken[0]"].startswith("-k broken --report")
    assert len(doc["runs"]) == 2 and len(_history(project)) == 2


def test_a_rerun_replaces_its_own_results_only(project):
    project.runpytest("-k", CLEAN, "--report")
    first = {r["test"]: r["run"]["id"] for r in _report(project)["results"]}
    project.runpytest("-k", "test_toy and float64", "--report")
    second = {r["test"]: r["run"]["id"] for r in _report(project)["results"]}
    changed = sorted(t.split("::")[1] for t in second if second[t] != first[t])
    assert changed == ["test_toy[float64]"] and len(second) == 2


def test_a_run_without_parity_tests_leaves_the_report_alone_and_says_so(project):
    project.runpytest("-k", CLEAN, "--report")
    before = (project.path / "reports" / "parity.json").read_bytes()
    result = project.runpytest("-k", "test_plain", "--report")
    result.stdout.fnmatch_lines(["*parity report not written: this run executed no parity test*left as it was*"])
    assert (project.path / "reports" / "parity.json").read_bytes() == before and len(_history(project)) == 1


def test_report_fresh_starts_over(project):
    project.runpytest("-k", CLEAN, "--report")
    project.runpytest("-k", "broken and 0", "--report", "--report-fresh")
    assert _keys(_report(project)) == [("test_toy_broken[0]", "toy_mlp", "float64")]


def test_a_parity_test_that_raises_is_an_error_row(project):
    project.runpytest("-k", "raises", "--report").assert_outcomes(failed=1)
    (row,) = _report(project)["results"]
    assert (row["status"], row["pair"], row["dtype"]) == ("error", "toy_mlp", "float64")
    assert row["error"]["type"] == "RuntimeError" and row["error"]["message"] == "boom in blocks.0"
    assert "ERROR" in (project.path / "reports" / "index.html").read_text()
    assert _history(project)[0]["results"][0]["status"] == "error" and _history(project)[0]["errors"] == 1


def test_a_selected_run_is_stamped_partial_and_a_whole_run_is_not(project):
    project.runpytest("-k", CLEAN, "--report")
    project.runpytest("--report")
    partial, whole = _history(project)
    assert partial["partial"] and partial["why_partial"] == [f"-k {CLEAN}"]
    assert not whole["partial"] and whole["total"] == 5


def test_short_summary_line_names_the_culprit(project):
    result = project.runpytest("-k", "broken and 1", "-ra")
    result.stdout.fnmatch_lines(["FAILED test_scratch.py::test_toy_broken[[]1[]] - culprit blocks.1: toy_mlp*"])


def test_failures_sharing_a_culprit_pattern_print_one_table_and_one_summary_line(project):
    result = project.runpytest("-k", "broken")
    text = result.stdout.str()
    assert text.count("culprit (introduces the error itself)") == 1, "the second failure points to the first table"
    assert "(same culprit pattern blocks.* as test_scratch.py::test_toy_broken[0]" in text
    result.stdout.fnmatch_lines(["FAIL  2 comparisons with culprit blocks.*: toy_mlp[[]float64[]], toy_mlp[[]float64[]]"])


def _collected(project, *args):
    result = project.runpytest("--collect-only", "-q", *args)
    return {line for line in result.stdout.lines if "::" in line}


def test_shards_partition_the_suite(project):
    everything = _collected(project)
    shards = [_collected(project, "--shard", f"{i}/3") for i in (1, 2, 3)]
    assert sum(len(s) for s in shards) == len(everything) == 8 and set().union(*shards) == everything


def test_shard_membership_does_not_depend_on_the_rest_of_the_selection(project):
    shard, broken = _collected(project, "--shard", "2/3"), _collected(project, "-k", "broken")
    assert _collected(project, "-k", "broken", "--shard", "2/3") == shard & broken


def test_a_malformed_shard_is_a_usage_error(project):
    result = project.runpytest("--shard", "3/2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--shard '3/2': need 1 <= i <= n*"])


def test_last_failed_reruns_the_failures_and_is_stamped_partial(project):
    project.runpytest("-p", "cacheprovider", "-k", "toy and not raises")
    result = project.runpytest("-p", "cacheprovider", "--lf", "--report")
    result.assert_outcomes(failed=2)
    (entry,) = _history(project)
    assert entry["why_partial"] == ["--lf"] and entry["failures"] == 2


def test_an_unreadable_report_is_kept_aside_not_overwritten(project):
    (project.path / "reports").mkdir()
    (project.path / "reports" / "parity.json").write_text("{not json")
    result = project.runpytest("-k", CLEAN, "--report")
    (aside,) = (project.path / "reports").glob("parity.json.unreadable-*")
    assert aside.read_text() == "{not json" and len(_report(project)["results"]) == 2
    result.stdout.fnmatch_lines(["*parity.json: not a parity report (invalid JSON*kept it as*"])


@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "xdist"])
def test_report_written_with_every_row(project: pytest.Pytester, xdist: bool):
    project.runpytest("--update-goldens", "-k", "golden")
    args = ["-k", f"({CLEAN}) or (broken and 0)", "--report", "-p", "no:cacheprovider"] + (["-n", "2"] if xdist else [])
    result = project.runpytest_subprocess(*args)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.re_match_lines([r".*culprit \(introduces the error itself\): blocks\.0.*"])
    result.stdout.re_match_lines([r"FAILED test_scratch.py::test_toy_broken\[0\] - culprit blocks\.0: .*"])
    doc = json.loads((project.path / "reports" / "parity.json").read_text())
    assert doc["schema"] == 1
    rows = sorted((r["pair"], r["dtype"], r["passed"]) for r in doc["results"])
    assert rows == [("toy_mlp", "float32", True), ("toy_mlp", "float64", False), ("toy_mlp", "float64", True)]
    failed = next(r for r in doc["results"] if not r["passed"])
    assert failed["first_divergence"] == "blocks.0" and failed["culprit"] == "blocks.0"
    page = (project.path / "reports" / "index.html").read_text()
    assert page.count('<tr class="') == 3 and "2 of 3 comparisons pass" in page
    assert len((project.path / "reports" / "history.jsonl").read_text().splitlines()) == 1


def test_nightly_skipped_with_reason_and_goldens(project: pytest.Pytester):
    result = project.runpytest("-k", "big or golden", "-rs")
    result.assert_outcomes(skipped=1, failed=1)  # no golden file yet: fails, saying how to create it
    result.stdout.fnmatch_lines(["*--update-goldens*", "*nightly: full-size check, run with --nightly*"])
    project.runpytest("-k", "golden", "--update-goldens").assert_outcomes(passed=1)
    project.runpytest("-k", "golden").assert_outcomes(passed=1)
    assert json.loads((project.path / "tests" / "goldens" / "answer.json").read_text()) == {"value": 42}
    assert project.runpytest("-k", "big", "--nightly").ret == 1


def test_the_plugin_keeps_the_last_reference_for_the_next_dtype():
    from harness.pairs import reuse_references

    assert reuse_references(True) is True  # switched on when the plugin configured this session


def test_an_xdist_controller_starts_without_importing_torch(pytester: pytest.Pytester):
    # the controller runs no test: torch in it would only delay every worker's start
    pytester.makeconftest('''
import sys

def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):
        with open("controller.txt", "w") as f:
            f.write(str("torch" in sys.modules))
''')
    pytester.makepyfile("def test_one():\n    pass\n\ndef test_two():\n    pass\n")
    pytester.runpytest_subprocess("-n", "2", "-p", "no:randomly", "-p", "no:cacheprovider").assert_outcomes(passed=2)
    assert (pytester.path / "controller.txt").read_text() == "False", "the xdist controller imported torch"
