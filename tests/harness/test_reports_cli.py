"""python -m harness report render|merge|diff, compare's terminal output and options, progress."""

import json

import pytest
import torch

import harness
from harness import cli, progress, runs
from harness.report import document
from harness_toys import TOY, drop_residual


@pytest.fixture(scope="module")
def results():
    candidate, _ = TOY.build(dtype=torch.float64)
    drop_residual(candidate.blocks[1])
    return (harness.compare_pair(TOY, dtype=torch.float64).to_dict(),
            harness.compare_pair(TOY, candidate=candidate, dtype=torch.float64).to_dict())


def _shard(tmp_path, name, rows, *, shard=None, time="2026-01-01T00:00:00Z", commit="c1"):
    stamp = runs.run_stamp(commit=commit, selection="--nightly", shard=shard,
                           why_partial=[f"shard {shard}"] if shard else [])
    stamp["time"] = time
    doc = document([dict(r, run=stamp) for r in rows])
    doc["runs"] = [stamp]
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


@pytest.fixture
def toy_registered(monkeypatch):
    harness.list_pairs()
    monkeypatch.setitem(harness.pairs._REGISTRY, TOY.name, TOY)
    buggy = harness.Pair(name="toy_eps", candidate=_eps_bug, reference=TOY.reference, convert=TOY.convert,
                         make_inputs=TOY.make_inputs)
    monkeypatch.setitem(harness.pairs._REGISTRY, buggy.name, buggy)


def _eps_bug():
    model = TOY.candidate()
    model.blocks[2].norm.eps = 1e-4
    return model


def test_passing_compare_prints_the_verdict_and_a_summary_not_a_table(toy_registered, capsys):
    assert cli.main(["compare", "toy_mlp", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "aligned calls agree exactly" in out and "candidate  " not in out
    assert len(out.splitlines()) <= 4


def test_compare_tolerance_options_decide_the_verdict(toy_registered, capsys):
    assert cli.main(["compare", "toy_eps", "--dtype", "float64"]) == 1
    assert cli.main(["compare", "toy_eps", "--dtype", "float64", "--atol", "1", "--rtol", "0"]) == 0
    assert "tolerance atol=1 rtol=0" in capsys.readouterr().out


def test_a_negative_tolerance_is_a_usage_error(toy_registered, capsys):
    assert cli.main(["compare", "toy_mlp", "--atol", "-1"]) == 2
    assert "Tolerance.atol must be a number >= 0" in capsys.readouterr().err


def test_list_with_an_unknown_tag_is_an_error(capsys):
    assert cli.main(["list", "--tag", "nightlyy"]) == 2
    err = capsys.readouterr().err
    assert "--tag 'nightlyy': no pair carries this tag; known tags:" in err and "nightly" in err


def test_report_repr_is_one_line(results):
    candidate, _ = TOY.build(dtype=torch.float64)
    drop_residual(candidate.blocks[1])
    text = repr(harness.compare_pair(TOY, candidate=candidate, dtype=torch.float64))
    assert "\n" not in text and len(text) < 300 and "culprit='blocks.1'" in text


def test_progress_names_each_stage_on_stderr_when_enabled(monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_PROGRESS", "1")
    harness.compare_pair(TOY, dtype=torch.float64)
    err = capsys.readouterr().err
    stages = [s for s in ("build", "trace candidate", "trace reference", "align", "localize") if f"] {s}" in err]
    assert stages == ["build", "trace candidate", "trace reference", "align", "localize"], err


def test_progress_is_quiet_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    monkeypatch.delenv("HARNESS_PROGRESS", raising=False)
    assert not progress.enabled()
    harness.compare_pair(TOY, dtype=torch.float64)
    assert capsys.readouterr().err == ""


def test_failing_table_explains_its_statuses(results):
    candidate, _ = TOY.build(dtype=torch.float64)
    drop_residual(candidate.blocks[1])
    text = harness.compare_pair(TOY, candidate=candidate, dtype=torch.float64).format()
    legend = text[text.index("statuses:"):]
    for status in ("introduced", "contains", "propagated", "*"):
        assert f"\n  {status} " in legend, f"the legend does not explain {status!r}:\n{legend}"
