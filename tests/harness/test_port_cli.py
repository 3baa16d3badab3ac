"""``python -m harness map`` and ``compare --candidate/--reference``: two models of one's own."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.cli import main

SPECS = str(Path(__file__).with_name("port_specs.py"))
BROKEN = str(Path(__file__).with_name("port_specs_broken.py"))


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def harness_cli(capsys):
    """``python -m harness ARGS`` in this process (a fresh interpreter would re-import torch each time)."""

    def run(*args: str) -> Run:
        code = main(list(args))
        out = capsys.readouterr()
        return Run(code, out.out, out.err)

    return run


def test_map_prints_the_table(harness_cli):
    run = harness_cli("map", f"{SPECS}:fused", f"{SPECS}:split", "--input-shape", "2x5x16")
    assert run.returncode == 0, run.stderr
    assert "qkv.weight  <- attention.query.weight + attention.key.weight + attention.value.weight" in run.stdout


def test_compare_specs_passes_after_transferring_the_inferred_map(harness_cli, tmp_path):
    saved = tmp_path / "map.json"
    run = harness_cli("compare", "--candidate", f"{SPECS}:fused", "--reference", f"{SPECS}:split",
                      "--input-shape", "2x5x16", "--dtype", "float64", "--save-map", str(saved))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS" in run.stdout and json.loads(saved.read_text())["coverage"] == 1.0


def test_compare_specs_with_a_bug_exits_1_and_names_the_module(harness_cli):
    run = harness_cli("compare", "--candidate", f"{SPECS}:fused_wrong_eps", "--reference", f"{SPECS}:split",
                      "--input-shape", "2x5x16", "--dtype", "float64")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "culprit (introduces the error itself): norm" in run.stdout


def test_compare_names_the_reference_weights_of_all_zeros_that_silence_a_branch(harness_cli):
    run = harness_cli("compare", "--candidate", f"{SPECS}:zero_scaled_relu_first", "--reference", f"{SPECS}:zero_scaled",
                      "--input-shape", "2x5x16", "--dtype", "float64")
    assert run.returncode == 0 and "1 weight(s) of all zeros that scale a branch (gamma)" in run.stdout, \
        run.stdout + run.stderr


def test_compare_with_randomize_finds_the_error_a_zero_layer_scale_hides(harness_cli):
    run = harness_cli("compare", "--candidate", f"{SPECS}:zero_scaled_relu_first", "--reference", f"{SPECS}:zero_scaled",
                      "--input-shape", "2x5x16", "--dtype", "float64", "--randomize")
    assert run.returncode == 1 and "relu" in run.stdout, run.stdout + run.stderr


def test_compare_reuses_a_saved_map(harness_cli, tmp_path):
    saved = tmp_path / "map.json"
    harness_cli("map", f"{SPECS}:fused", f"{SPECS}:split", "--input-shape", "2x5x16", "--save-map", str(saved))
    run = harness_cli("compare", "--candidate", f"{SPECS}:fused", "--reference", f"{SPECS}:split",
                      "--input-shape", "2x5x16", "--dtype", "float64", "--map", str(saved))
    assert run.returncode == 0, run.stdout + run.stderr


def test_compare_picks_the_field_of_a_dict_output_named_on_the_command_line(harness_cli):
    run = harness_cli("compare", "--candidate", f"{SPECS}:fused_dict", "--reference", f"{SPECS}:split",
                      "--input-shape", "2x5x16", "--dtype", "float64", "--candidate-output", "hidden")
    assert run.returncode == 0, run.stdout + run.stderr


def test_map_picks_the_field_of_a_dict_output_named_on_the_command_line(harness_cli):
    run = harness_cli("map", f"{SPECS}:fused_dict", f"{SPECS}:split", "--input-shape", "2x5x16",
                      "--candidate-output", "hidden")
    assert run.returncode == 0 and "verified" in run.stdout, run.stdout + run.stderr


@pytest.mark.parametrize("args, message", [
    (("compare", "--candidate", f"{SPECS}:fused_dict", "--reference", f"{SPECS}:split", "--input-shape", "2x5x16"),
     "the candidate returns the tensors ['hidden', 'pooled'], the reference one tensor; give candidate_outputs="
     "/reference_outputs= functions picking the tensors to compare (on the command line: "
     "--candidate-output/--reference-output NAME)"),
    (("compare", "--candidate", f"{SPECS}:fused_dict", "--reference", f"{SPECS}:split", "--input-shape", "2x5x16",
      "--candidate-output", "pooler_output"),
     "--candidate-output 'pooler_output': the model's output has no such field (it has ['hidden', 'pooled'])"),
    (("map", "missing.py:fn", f"{SPECS}:split"), "no file 'missing.py'"),
    (("map", f"{SPECS}:not_a_model", f"{SPECS}:split"), "returned str, expected an nn.Module"),
    (("map", "no_colon", f"{SPECS}:split"), "is not a model spec"),
    (("map", f"{SPECS}:fused", f"{SPECS}:split", "--input-shape", "2by5"), "expected positive sizes joined by 'x'"),
    (("compare", "--candidate", f"{SPECS}:fused"), "--candidate needs --reference"),
    (("compare", "--reference", f"{SPECS}:split"), "--reference needs --candidate"),
    (("compare",), "compare needs a registered pair"),
    (("compare", "toy_mlp", "--input-shape", "1x8"), "--input-shape only apply to --candidate/--reference"),
    (("compare", "toy_mlp", "--randomize"), "--randomize only apply to --candidate/--reference"),
    (("compare", "toy_mlp", "--rows", "-5"), "--rows -5: give the number of table rows"),
    (("map", f"{SPECS}:fused", f"{SPECS}:split", "--save-map", "/proc/map.json"), "/proc does not take new files"),
    # the user's own code failing: named, with what to fix, never a traceback
    (("map", f"{SPECS}:needs_an_argument", f"{SPECS}:split"), "must build the model with no arguments"),
    (("map", f"{SPECS}:fails_to_build", f"{SPECS}:split"), "fails_to_build() raised RuntimeError: the checkpoint is missing"),
    (("map", f"{BROKEN}:model", f"{SPECS}:split"), "raised ModuleNotFoundError: No module named 'a_package_that_is_not"),
    (("map", f"{SPECS}:fused", f"{SPECS}:split", "--input-shape", "2x5x15"), "the candidate's forward raised RuntimeError"),
    (("compare", "--candidate", f"{SPECS}:fused", "--reference", f"{SPECS}:split", "--input-shape", "2x5x15"),
     "(inputs: args.0 (2, 5, 15)); check the inputs' shapes"),
])
def test_usage_errors_are_one_line_and_exit_2(harness_cli, args, message):
    run = harness_cli(*args)
    assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


def _saved_map(harness_cli, tmp_path: Path) -> Path:
    saved = tmp_path / "map.json"
    harness_cli("map", f"{SPECS}:fused", f"{SPECS}:split", "--input-shape", "2x5x16", "--save-map", str(saved))
    return saved


@pytest.mark.parametrize("edit, message", [
    (lambda e: e.update(transform=[{"op": "transpose", "dim0": 0, "dim1": 1}]), "'dims' must be a list of two integers"),
    (lambda e: e.update(reference=e["reference"][0]), "'reference' must be a non-empty list of reference tensor names"),
    (lambda e: e.update(shape="16x16"), "'shape' must be a list of sizes"),
    (lambda e: e.update(kind="weights"), "'kind' must be one of parameter, buffer"),
    (lambda e: e.update(transform=[{"op": "reshape", "shape": [5, 5]}]), "do not fit"),
])
def test_a_hand_edited_map_that_does_not_hold_is_one_line_naming_the_entry(harness_cli, tmp_path, edit, message):
    saved = _saved_map(harness_cli, tmp_path)
    document = json.loads(saved.read_text())
    edit(next(e for e in document["entries"] if e["candidate"] == "norm.weight"))
    saved.write_text(json.dumps(document))
    run = harness_cli("compare", "--candidate", f"{SPECS}:fused", "--reference", f"{SPECS}:split",
                      "--input-shape", "2x5x16", "--map", str(saved))
    assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
