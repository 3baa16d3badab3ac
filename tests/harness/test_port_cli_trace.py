"""``compare --candidate SPEC --reference-trace FILE``: a port of one's own against a recorded reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main

SPECS = str(Path(__file__).with_name("port_specs.py"))
SHAPE = "2x5x16"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> dict[str, str]:
    """The reference spec recorded with and without its weights, the map saved where it runs, and a
    spec building the reference's architecture with weights of its own."""
    folder = tmp_path_factory.mktemp("recorded")
    files = {"weights": folder / "ref.trace", "bare": folder / "bare.trace", "map": folder / "map.json",
             "specs": folder / "more_specs.py"}
    common = ["--input-shape", SHAPE, "--dtype", "float64"]
    assert main(["record", f"{SPECS}:split", *common, "--out", str(files["weights"]), "--weights"]) == 0
    assert main(["record", f"{SPECS}:split", *common, "--out", str(files["bare"])]) == 0
    assert main(["map", f"{SPECS}:fused", f"{SPECS}:split", *common, "--save-map", str(files["map"])]) == 0
    files["specs"].write_text("from port_toys import SplitBlock\n\n\ndef split_drawn_anew():\n"
                              "    return SplitBlock()  # the reference's names, weights of its own\n")
    return {k: str(v) for k, v in files.items()}


def compare(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["compare", "--dtype", "float64", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_port_passes_against_a_recorded_reference_through_a_saved_map(recorded, capsys):
    code, out, err = compare(capsys, "--candidate", f"{SPECS}:fused", "--reference-trace", recorded["weights"],
                             "--map", recorded["map"])
    assert code == 0 and "PASS" in out, out + err
    assert f"tensors transferred from trace {recorded['weights']}, coverage 100.0%" in out, out


def test_the_transfer_line_gives_the_coverage_of_a_candidate_the_map_was_not_made_for(recorded, capsys):
    code, out, err = compare(capsys, "--candidate", f"{SPECS}:fused_with_head", "--reference-trace",
                             recorded["weights"], "--map", recorded["map"])
    line = next((l for l in out.splitlines() if l.startswith("weights:")), out + err)
    assert "coverage 100.0%" not in line and "2 unmatched candidate" in line, line


def test_a_port_bug_is_blamed_against_a_recorded_reference(recorded, capsys):
    code, out, err = compare(capsys, "--candidate", f"{SPECS}:fused_wrong_eps", "--reference-trace",
                             recorded["weights"], "--map", recorded["map"])
    assert code == 1 and "culprit (introduces the error itself): norm" in out, out + err


def test_a_candidate_named_as_the_recorded_model_takes_the_stored_weights_without_a_map(recorded, capsys):
    code, out, err = compare(capsys, "--candidate", f"{recorded['specs']}:split_drawn_anew",
                             "--reference-trace", recorded["weights"])
    assert code == 0 and "loaded from trace" in out and "PASS" in out, out + err


def test_a_candidate_built_with_the_recorded_weights_needs_no_stored_weights(recorded, capsys):
    code, out, err = compare(capsys, "--candidate", f"{SPECS}:split", "--reference-trace", recorded["bare"])
    assert code == 0 and "weights: the candidate's own; 100.0% of the recorded weights" in out, out + err


def test_the_json_result_names_the_trace_compared_against(recorded, capsys, tmp_path):
    code, _, _ = compare(capsys, "--candidate", f"{SPECS}:fused", "--reference-trace", recorded["weights"],
                         "--map", recorded["map"], "--json", str(tmp_path / "r.json"))
    test = json.loads((tmp_path / "r.json").read_text())["results"][0]["test"]
    assert code == 0 and test == f"compare --candidate {SPECS}:fused --reference-trace {recorded['weights']}", test


@pytest.mark.parametrize("args, message", [
    (("--candidate", "{SPECS}:fused", "--reference-trace", "{weights}"),
     "are not among the weights trace {weights} stores (by name and shape), and the candidate's own weights are not "
     "the recorded ones: give --map FILE to transfer the stored weights (make the map where the reference runs: "
     "python -m harness map {SPECS}:fused REFERENCE --save-map FILE)"),
    (("--candidate", "{SPECS}:fused", "--reference-trace", "{bare}", "--map", "{map}"),
     "which was recorded without them: record it again with --weights"),
    (("--candidate", "{SPECS}:fused", "--reference-trace", "{bare}"),
     "from the command line: let {SPECS}:fused build the model with the converted weights, or record the trace "
     "again with --weights and give --map FILE"),
    (("--candidate", "{SPECS}:fused_dict", "--reference-trace", "{weights}", "--map", "{map}"),
     "the weight map names 11 candidate tensor(s) the candidate does not have: norm.weight"),
    (("--candidate", "{SPECS}:fused", "--reference-trace", "{weights}", "--input-shape", SHAPE),
     "--input-shape: the candidate runs on the inputs and weights recorded in the trace; drop it"),
    (("--candidate", "{SPECS}:fused", "--reference-trace", "{weights}", "--randomize"),
     "--randomize: the candidate runs on the inputs and weights recorded in the trace; drop it"),
    (("--candidate", "{SPECS}:fused", "--reference-trace", "{weights}", "--save-map", "{weights}.map.json"),
     "make it where the reference runs (python -m harness map CANDIDATE REFERENCE --save-map FILE)"),
    (("--candidate", "{SPECS}:fused", "--reference", "{SPECS}:split", "--reference-trace", "{weights}"),
     "--reference SPEC and --reference-trace FILE both give the reference; give one of them"),
    (("--candidate", "{SPECS}:fused_dict", "--reference-trace", "{weights}", "--reference-output", "hidden"),
     "pick the candidate's matching field with --candidate-output"),
    (("--candidate", "{SPECS}:fused", "--reference-trace", "{weights}", "--dtype", "float32"),
     "was recorded in float64, the comparison asks for float32: compare with --dtype float64"),
    (("--reference-trace", "{weights}"), "a registered pair whose candidate to build, or --candidate SPEC (your port)"),
])
def test_usage_errors_against_a_trace_are_one_line_and_exit_2(recorded, capsys, args, message):
    fill = dict(recorded, SPECS=SPECS)
    code, _, err = compare(capsys, *(a.format(**fill) for a in args))
    assert code == 2 and message.format(**fill) in err and len(err.strip().splitlines()) == 1, err
