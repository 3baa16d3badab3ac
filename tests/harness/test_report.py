"""harness.report: the report JSON schema, the terminal table and its legend, the HTML page, atomic writes."""

import json

import pytest
import torch

import harness
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


def test_report_repr_is_one_line():
    candidate, _ = TOY.build(dtype=torch.float64)
    drop_residual(candidate.blocks[1])
    text = repr(harness.compare_pair(TOY, candidate=candidate, dtype=torch.float64))
    assert "\n" not in text and len(text) < 300 and "culprit='blocks.1'" in text


def test_failing_table_explains_its_statuses():
    candidate, _ = TOY.build(dtype=torch.float64)
    drop_residual(candidate.blocks[1])
    text = harness.compare_pair(TOY, candidate=candidate, dtype=torch.float64).format()
    legend = text[text.index("statuses:"):]
    for status in ("introduced", "contains", "propagated", "*"):
        assert f"\n  {status} " in legend, f"the legend does not explain {status!r}:\n{legend}"
