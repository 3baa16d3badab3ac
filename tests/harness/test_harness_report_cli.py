"""Report JSON schema, the terminal table, the HTML page, the CLI, and golden files."""

import json

import pytest
import torch

import harness
from harness import cli, golden
from harness.report import document, write_html, write_json
from harness_toys import TOY, drop_residual

LAYER_KEYS = {"candidate", "reference", "call", "shape", "max_abs", "rel_l2", "passed"}
RESULT_KEYS = {"pair", "dtype", "device", "passed", "first_divergence", "culprit", "output", "layers",
               "unmatched", "seconds"}


def test_report_json_follows_the_schema(tmp_path):
    report = harness.compare_pair(TOY, dtype=torch.float64)
    path = write_json(tmp_path / "r.json", [report.to_dict()])
    doc = json.loads(path.read_text())
    assert doc["schema"] == 1 and {"versions", "device", "threads"} <= set(doc["environment"])
    (result,) = doc["results"]
    assert RESULT_KEYS <= set(result) and result["pair"] == "toy_mlp" and result["passed"] is True
    assert set(result["output"]) >= {"max_abs", "max_rel", "rel_l2", "cosine"}
    assert all(LAYER_KEYS <= set(layer) for layer in result["layers"])
    assert result["unmatched"] == {"candidate": [], "reference": []}


def test_failing_report_table_reads_like_a_report(tmp_path):
    candidate, _ = TOY.build(dtype=torch.float64)
    drop_residual(candidate.blocks[1])
    report = harness.compare_pair(TOY, candidate=candidate, dtype=torch.float64)
    text = report.format(max_rows=6)
    assert "FAIL" in text and "first divergence: blocks.1" in text and "culprit" in text
    assert "rows shown" in text  # long tables are cut around the divergence
    page = write_html(tmp_path / "index.html", document([report.to_dict()])).read_text()
    assert "toy_mlp" in page and "FAIL" in page and "blocks.1" in page


def test_cli_list_and_compare_exit_codes(capsys, tmp_path, monkeypatch):
    harness.list_pairs()  # load the real definitions first, then add toys for this test only
    monkeypatch.setitem(harness.pairs._REGISTRY, TOY.name, TOY)
    assert cli.main(["list"]) == 0
    assert "toy_mlp" in capsys.readouterr().out.splitlines()
    out = tmp_path / "toy.json"
    assert cli.main(["compare", "toy_mlp", "--dtype", "float64", "--json", str(out)]) == 0
    assert "PASS" in capsys.readouterr().out and json.loads(out.read_text())["results"][0]["passed"]
    # an injected bug (through the builder the CLI uses) makes it exit 1 and name the module
    buggy = harness.Pair(name="toy_buggy", candidate=lambda: _eps_bug(), reference=TOY.reference,
                         convert=TOY.convert, make_inputs=TOY.make_inputs)
    monkeypatch.setitem(harness.pairs._REGISTRY, buggy.name, buggy)
    assert cli.main(["compare", "toy_buggy", "--dtype", "float64"]) == 1
    text = capsys.readouterr().out
    assert "first divergence: blocks.2.norm" in text and "culprit (introduces the error itself): blocks.2.norm" in text
    assert cli.main(["compare", "no_such_pair"]) == 2
    assert "no pair named 'no_such_pair'" in capsys.readouterr().err
    assert cli.main(["compare", "toy_mlp", "--device", "foo"]) == 2
    assert "--device 'foo' is not a torch device" in capsys.readouterr().err


def _eps_bug():
    model = TOY.candidate()
    model.blocks[2].norm.eps = 1e-4
    return model


def test_golden_roundtrip_and_report(tmp_path):
    value = {"grid": [40, 60], "t": torch.arange(6, dtype=torch.float64).reshape(2, 3), "name": "x"}
    golden.check("g", value, directory=tmp_path, update=True)
    golden.check("g", value, directory=tmp_path)
    changed = dict(value, t=value["t"] + torch.tensor([[0, 0, 0], [0, 1e-3, 0]], dtype=torch.float64))
    with pytest.raises(golden.GoldenMismatch) as info:
        golden.check("g", changed, directory=tmp_path, regenerate="pytest t.py --update-goldens")
    message = str(info.value)
    assert "$.t: tensor (2, 3) torch.float64: 1 of 6 elements differ" in message
    assert "(1, 1): 4.001 vs 4" in message and "pytest t.py --update-goldens" in message
    golden.check("g", changed, directory=tmp_path, atol=1e-2)
    with pytest.raises(golden.GoldenMismatch, match="does not exist; create it with"):
        golden.check("missing", value, directory=tmp_path)
    with pytest.raises(ValueError, match="plain file stem"):
        golden.check("../x", value, directory=tmp_path)


def test_report_files_are_written_atomically_and_readable(tmp_path):
    import os
    import stat

    from harness.report import atomic_write_text

    path = atomic_write_text(tmp_path / "sub" / "a.json", "{}")
    assert path.read_text() == "{}" and not [p for p in path.parent.iterdir() if p.name.startswith(".")]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask

    with pytest.raises(TypeError):
        atomic_write_text(path, 123)  # type: ignore[arg-type]
    assert path.read_text() == "{}" and len(list(path.parent.iterdir())) == 1  # old file kept, no temp left
