"""The pytest plugin end to end, in a scratch project run by pytester (also under xdist)."""

import json
from pathlib import Path

import pytest

TOYS = Path(__file__).with_name("harness_toys.py").read_text()

TESTS = '''
import pytest, torch
from harness_toys import TOY, drop_residual

@pytest.mark.parity
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parity_toy(parity_check, dtype):
    parity_check(TOY, dtype=dtype)

@pytest.mark.parity
def test_parity_toy_broken(parity_check):
    candidate, _ = TOY.build(dtype=torch.float64)
    drop_residual(candidate.blocks[0])
    parity_check(TOY, candidate=candidate)

@pytest.mark.nightly
def test_big():
    raise AssertionError("nightly tests must not run by default")

def test_golden_value(golden):
    golden("answer", {"value": 42})
'''


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(harness_toys=TOYS, test_scratch=TESTS)
    pytester.syspathinsert()
    return pytester


@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "xdist"])
def test_report_written_with_every_row(project: pytest.Pytester, xdist: bool):
    project.runpytest("--update-goldens", "-k", "golden")
    args = ["-k", "parity", "--report", "-p", "no:cacheprovider"] + (["-n", "2"] if xdist else [])
    result = project.runpytest_subprocess(*args)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.re_match_lines([r".*culprit \(introduces the error itself\): blocks\.0.*"])
    result.stdout.re_match_lines([r"FAILED test_scratch.py::test_parity_toy_broken - culprit blocks\.0: .*"])
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
