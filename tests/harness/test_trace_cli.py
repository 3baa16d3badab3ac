"""``python -m harness record`` and ``compare PAIR --reference-trace``."""

from __future__ import annotations

from harness.cli import main
from harness.tracefile import load_trace

PAIR = "convnext_tiny_stage3_block"


def test_record_then_compare_against_the_file_passes(tmp_path, capsys):
    path = tmp_path / "ref.trace"
    assert main(["record", PAIR, "--side", "reference", "--dtype", "float64", "--out", str(path)]) == 0
    assert main(["compare", PAIR, "--dtype", "float64", "--reference-trace", str(path)]) == 0
    out = capsys.readouterr().out
    assert "trace written to" in out and "PASS" in out and f"reference from trace {path}" in out, out
    assert load_trace(path).weights() is not None  # a pair's trace can build its candidate alone


def test_a_pair_side_can_be_named_as_pair_colon_side(tmp_path):
    path = tmp_path / "ref.trace"
    assert main(["record", f"{PAIR}:reference", "--dtype", "float64", "--out", str(path), "--no-weights"]) == 0
    trace = load_trace(path)
    assert trace.source == f"{PAIR}:reference" and trace.weights() is None


def test_a_model_spec_is_recorded_on_seeded_inputs_of_the_given_shape(tmp_path):
    spec = tmp_path / "models.py"
    spec.write_text("import torch\n\ndef tiny():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())\n")
    path = tmp_path / "tiny.trace"
    assert main(["record", f"{spec}:tiny", "--input-shape", "2x3x8x8", "--out", str(path)]) == 0
    trace = load_trace(path)
    assert trace.call().args[0].shape == (2, 3, 8, 8) and [r.key for r in trace.records()][-1] == "<root>#0"


def test_a_foreign_file_is_one_line_on_stderr_and_exit_2(tmp_path, capsys):
    bogus = tmp_path / "bogus.trace"
    bogus.write_text("not a trace")
    assert main(["compare", PAIR, "--dtype", "float64", "--reference-trace", str(bogus)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bogus.trace is not a trace file" in err and "\n" not in err, err


def test_a_dtype_other_than_the_recorded_one_is_refused(tmp_path, capsys):
    path = tmp_path / "ref.trace"
    assert main(["record", PAIR, "--dtype", "float64", "--out", str(path), "--no-weights"]) == 0
    assert main(["compare", PAIR, "--dtype", "float32", "--reference-trace", str(path)]) == 2
    assert "recorded in float64" in capsys.readouterr().err


def test_recording_a_spec_needs_an_input_shape(tmp_path, capsys):
    spec = tmp_path / "models.py"
    spec.write_text("import torch\n\ndef tiny():\n    return torch.nn.Linear(2, 2)\n")
    assert main(["record", f"{spec}:tiny", "--out", str(tmp_path / "t.trace")]) == 2
    assert "needs --input-shape" in capsys.readouterr().err
    assert not any(p.suffix == ".trace" for p in tmp_path.iterdir())
