"""python -m harness report render|merge|diff: pages from report JSON, shard reports merged into one run,
two runs compared."""

import json

import pytest

from harness import cli, runs
from harness.report import document
from report_toys import stamp, toy_results


@pytest.fixture(scope="module")
def results():
    return toy_results()


def _shard(tmp_path, name, rows, *, shard=None, time="2026-01-01T00:00:00Z", commit="c1"):
    run = stamp(time=time, commit=commit, selection="--nightly", shard=shard,
                why_partial=[f"shard {shard}"] if shard else [])
    doc = document([dict(r, run=run) for r in rows])
    doc["runs"] = [run]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def test_merge_of_every_shard_is_one_whole_run(tmp_path, results, capsys):
    passing, failing = results
    a = _shard(tmp_path, "a", [dict(passing, test="t1")], shard="1/2")
    b = _shard(tmp_path, "b", [dict(failing, test="t2")], shard="2/2")
    assert cli.main(["report", "merge", str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert sorted(r["test"] for r in doc["results"]) == ["t1", "t2"] and len(doc["runs"]) == 2
    (entry,) = runs.read_history(tmp_path / "out" / "history.jsonl")
    assert not entry["partial"] and entry["passed"] == 1 and entry["failures"] == 1
    assert {"index.html", "dashboard.html"} <= {p.name for p in (tmp_path / "out").iterdir()}


def test_merge_missing_a_shard_is_a_partial_run(tmp_path, results, capsys):
    a = _shard(tmp_path, "a", [dict(results[0], test="t1")], shard="1/3")
    assert cli.main(["report", "merge", str(a), "--out", str(tmp_path / "out")]) == 0
    (entry,) = runs.read_history(tmp_path / "out" / "history.jsonl")
    assert entry["partial"] and entry["why_partial"] == ["missing shards 2/3, 3/3"]
    assert "partial: missing shards 2/3, 3/3" in capsys.readouterr().out


def test_merge_keeps_the_newer_result_of_a_key(tmp_path, results):
    passing, failing = results
    old = _shard(tmp_path, "old", [dict(failing, test="t")], time="2026-01-01T00:00:00Z")
    new = _shard(tmp_path, "new", [dict(passing, test="t")], time="2026-01-02T00:00:00Z")
    assert cli.main(["report", "merge", str(new), str(old), "--out", str(tmp_path / "out")]) == 0
    (row,) = json.loads((tmp_path / "out" / "parity.json").read_text())["results"]
    assert row["passed"] is True


def test_merge_of_a_foreign_file_names_it(tmp_path, capsys):
    foreign = tmp_path / "x.json"
    foreign.write_text('{"hello": 1}')
    assert cli.main(["report", "merge", str(foreign)]) == 2
    assert f"{foreign}: not a parity report" in capsys.readouterr().err


@pytest.mark.parametrize("damage, problem", [
    (lambda doc: doc.update(environment="cpu"), '"environment" is not an object'),
    (lambda doc: doc["results"].append("t9"), "result 1 is str, not an object"),
    (lambda doc: doc["results"][0].update(layers="all"), "result 0 field 'layers' is 'all'"),
    (lambda doc: doc["results"][0].update(output=3.0), "result 0 field 'output' is 3.0"),
    (lambda doc: doc["runs"][0].update(shard="2/x"), "has shard '2/x', not i/n"),
])
def test_merge_of_a_damaged_report_is_one_line_naming_the_file_and_field(tmp_path, results, capsys, damage, problem):
    path = _shard(tmp_path, "damaged", [dict(results[0], test="t1")])
    doc = json.loads(path.read_text())
    damage(doc)
    path.write_text(json.dumps(doc))
    assert cli.main(["report", "merge", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{path}: a damaged parity report (" in err and problem in err, err
    assert not (tmp_path / "out").exists(), "a refused merge wrote files"


def test_merge_takes_a_report_with_an_infinite_error(tmp_path, results):
    inf = dict(results[1], test="t1", output=dict(results[1]["output"], max_abs="inf", rel_l2="inf"))
    path = _shard(tmp_path, "inf", [inf])
    assert cli.main(["report", "merge", str(path), "--out", str(tmp_path / "out")]) == 0
    (entry,) = runs.read_history(tmp_path / "out" / "history.jsonl")
    assert entry["results"][0]["max_abs"] is None and entry["failures"] == 1


def test_render_writes_pages_from_json(tmp_path, results, capsys):
    _shard(tmp_path, "parity", [dict(results[1], test="t")])
    assert cli.main(["report", "render", str(tmp_path)]) == 0
    assert (tmp_path / "index.html").is_file() and (tmp_path / "pairs" / "toy_mlp-float64.html").is_file()


def test_render_without_a_report_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["report", "render", str(tmp_path)]) == 2
    assert "parity.json does not exist" in capsys.readouterr().err


def test_diff_reports_a_newly_failing_result_and_exits_1(tmp_path, results, capsys):
    passing, failing = results
    old = _shard(tmp_path, "old", [dict(passing, test="t")])
    new = _shard(tmp_path, "new", [dict(failing, test="t")], time="2026-01-02T00:00:00Z")
    assert cli.main(["report", "diff", str(old), str(new)]) == 1
    assert "regressed toy_mlp[float64] t (pass -> fail): newly failing" in capsys.readouterr().out


def test_diff_of_a_fix_exits_0(tmp_path, results, capsys):
    passing, failing = results
    old = _shard(tmp_path, "old", [dict(failing, test="t")])
    new = _shard(tmp_path, "new", [dict(passing, test="t")])
    assert cli.main(["report", "diff", str(old), str(new)]) == 0
    assert "fixed     toy_mlp[float64] t (fail -> pass)" in capsys.readouterr().out


def test_render_merge_and_diff_run_without_importing_torch(tmp_path, results):
    from helpers import cli_in_fresh_process

    passing, failing = results
    a = _shard(tmp_path, "a", [dict(passing, test="t1")], shard="1/2")
    b = _shard(tmp_path, "b", [dict(failing, test="t2")], shard="2/2")
    out = tmp_path / "out"
    codes, torch_modules = cli_in_fresh_process(["report", "merge", a, b, "--out", out], ["report", "render", out],
                                                ["report", "diff", a, out / "parity.json"])
    assert (codes, torch_modules) == ([0, 0, 0], []), (
        f"exit codes {codes}, imported {torch_modules}; "
        f"`python -X importtime -m harness report render {out} 2>&1 | grep -B5 torch` shows which import pulls it")
