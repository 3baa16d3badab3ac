"""The command line: compare's exit codes, output and options; and bad paths and bad settings give one
clear line (CLI: on stderr, exit 2), never a traceback: report, golden and checkpoint writes, inference
mode, include regexes, models on two devices."""

import errno
import json
import os

import pytest
import torch
from torch import nn

import harness
from harness import cli, golden
from harness.files import atomic_write_text
from harness_toys import TOY, TOY_EPS

F64 = torch.float64


@pytest.fixture
def toy_cli(monkeypatch):
    harness.list_pairs()  # the real definitions first, then the toys for this test only
    for pair in (TOY, TOY_EPS):
        monkeypatch.setitem(harness.pairs._REGISTRY, pair.name, pair)


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_naming(err: str, path) -> str:
    line = err.strip()
    assert "\n" not in line, f"expected one line on stderr, got:\n{err}"
    assert line.startswith("error: ") and str(path) in line, f"the error does not name {path}: {line}"
    assert "Traceback" not in err
    return line


# -- compare, list ---------------------------------------------------------------------------------
def test_cli_list_and_compare_exit_codes(toy_cli, capsys, tmp_path):
    assert cli.main(["list"]) == 0
    assert "toy_mlp" in capsys.readouterr().out.splitlines()
    out = tmp_path / "toy.json"
    assert cli.main(["compare", "toy_mlp", "--dtype", "float64", "--json", str(out)]) == 0
    assert "PASS" in capsys.readouterr().out and json.loads(out.read_text())["results"][0]["passed"]
    # an injected bug (through the builder the CLI uses) makes it exit 1 and name the module
    assert cli.main(["compare", "toy_eps", "--dtype", "float64"]) == 1
    text = capsys.readouterr().out
    assert "first divergence: blocks.2.norm" in text and "culprit (introduces the error itself): blocks.2.norm" in text
    assert cli.main(["compare", "no_such_pair"]) == 2
    assert "no pair named 'no_such_pair'" in capsys.readouterr().err
    assert cli.main(["compare", "toy_mlp", "--device", "foo"]) == 2
    assert "--device 'foo' is not a torch device" in capsys.readouterr().err


def test_passing_compare_prints_the_verdict_and_a_summary_not_a_table(toy_cli, capsys):
    assert cli.main(["compare", "toy_mlp", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "aligned calls agree exactly" in out and "candidate  " not in out
    assert len(out.splitlines()) <= 4


def test_compare_tolerance_options_decide_the_verdict(toy_cli, capsys):
    assert cli.main(["compare", "toy_eps", "--dtype", "float64"]) == 1
    assert cli.main(["compare", "toy_eps", "--dtype", "float64", "--atol", "1", "--rtol", "0"]) == 0
    assert "tolerance atol=1 rtol=0" in capsys.readouterr().out


def test_a_negative_tolerance_is_a_usage_error(toy_cli, capsys):
    assert cli.main(["compare", "toy_mlp", "--atol", "-1"]) == 2
    assert "Tolerance.atol must be a number >= 0" in capsys.readouterr().err


def test_list_with_an_unknown_tag_is_an_error(capsys):
    assert cli.main(["list", "--tag", "nightlyy"]) == 2
    err = capsys.readouterr().err
    assert "--tag 'nightlyy': no pair carries this tag; known tags:" in err and "nightly" in err


# -- report files --------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["file-as-folder", "below-a-file", "a-directory"])
def test_compare_json_path_that_cannot_be_written_is_one_line_exit_2(toy_cli, capsys, tmp_path, where):
    (tmp_path / "taken").write_text("not a folder")
    (tmp_path / "reports").mkdir()
    target = {"file-as-folder": tmp_path / "taken" / "r.json", "below-a-file": tmp_path / "taken" / "sub" / "r.json",
              "a-directory": tmp_path / "reports"}[where]
    code, out, err = _run(capsys, "compare", "toy_mlp", "--dtype", "float64", "--json", str(target))
    assert code == 2, f"exit {code}; stderr: {err}"
    line = _one_line_naming(err, target)
    assert ("is a file, not a folder" in line) if where != "a-directory" else ("is a directory" in line), line
    assert out == "", "the comparison ran although its report could not be written"
    assert (tmp_path / "taken").read_text() == "not a folder" and list((tmp_path / "reports").iterdir()) == []


def test_disk_full_while_writing_the_report_is_one_line_exit_2(toy_cli, capsys, tmp_path, monkeypatch):
    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "r.json"
    monkeypatch.setattr(os, "fsync", disk_full)
    code, _, err = _run(capsys, "compare", "toy_mlp", "--dtype", "float64", "--json", str(target))
    assert code == 2 and "No space left on device" in _one_line_naming(err, target)
    assert list(tmp_path.iterdir()) == [], "a temporary or a torn report was left behind"


def test_report_write_errors_keep_their_oserror_type_and_name_the_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"cannot write .*taken/r\.json: .*taken is a file, not a folder"):
        atomic_write_text(tmp_path / "taken" / "r.json", "{}")
    with pytest.raises(IsADirectoryError, match=r"cannot write .*: it is a directory"):
        atomic_write_text(tmp_path, "{}")


# -- golden and checkpoint files -----------------------------------------------------------------
def test_golden_update_into_an_unwritable_place_names_the_file(tmp_path):
    (tmp_path / "goldens").write_text("a file where the folder should be")
    with pytest.raises(NotADirectoryError, match=r"cannot write .*goldens/table\.json"):
        golden.check("table", {"a": 1}, directory=tmp_path / "goldens", update=True)
    (tmp_path / "dir" / "table.json").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match=r"cannot write .*dir/table\.json: it is a directory"):
        golden.check("table", {"a": 1}, directory=tmp_path / "dir", update=True)


@pytest.fixture
def legacy_resampler(tmp_path):
    from candidates.io import save_state_dict
    from candidates.resampler.resampler import BiMambaResampler, ResamplerConfig

    config = ResamplerConfig(vision_dim=6, hidden_dim=8, out_dim=5, depth=1, expand=1.5, d_state=3, d_conv=3)
    return save_state_dict(BiMambaResampler(config).state_dict(), tmp_path / "legacy.safetensors")


def test_add_metadata_onto_a_directory_is_one_line_exit_2(capsys, legacy_resampler):
    meta = legacy_resampler.with_name("legacy.metadata.json")
    meta.mkdir()
    code, _, err = _run(capsys, "add-metadata", str(legacy_resampler), "--force")
    assert code == 2 and "is a directory" in _one_line_naming(err, meta)


def test_add_metadata_on_a_full_disk_is_one_line_exit_2(capsys, legacy_resampler, monkeypatch):
    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    code, _, err = _run(capsys, "add-metadata", str(legacy_resampler))
    meta = legacy_resampler.with_name("legacy.metadata.json")
    assert code == 2 and "No space left" in _one_line_naming(err, meta)
    assert sorted(p.name for p in legacy_resampler.parent.iterdir()) == ["legacy.safetensors"]


def test_checkpoint_save_into_a_file_as_folder_names_the_target(tmp_path):
    from candidates.io import save_state_dict

    (tmp_path / "runs").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"cannot write .*runs/w\.safetensors"):
        save_state_dict({"w": torch.ones(2)}, tmp_path / "runs" / "w.safetensors")


def test_inspecting_a_directory_is_one_line_exit_2(capsys, tmp_path):
    target = tmp_path / "model.pth"
    target.mkdir()
    code, _, err = _run(capsys, "inspect", str(target))
    assert code == 2 and "is a directory" in _one_line_naming(err, target)


# -- settings ------------------------------------------------------------------------------------
def test_compare_inside_inference_mode_gives_the_same_report():
    candidate, reference = TOY.build(dtype=F64)
    with torch.no_grad():
        candidate.blocks[1].fc1.bias.add_(1e-6)
    expected = harness.compare(candidate, reference, TOY.inputs(dtype=F64))
    with torch.inference_mode():
        got = harness.compare(candidate, reference, TOY.inputs(dtype=F64))  # inputs are inference tensors too
    assert (got.passed, got.first_divergence, got.culprit) == (False, "blocks.1.fc1", "blocks.1.fc1"), got.format()
    assert got.output == expected.output
    assert not torch.is_inference(candidate.blocks[1].fc1.bias)


def test_compare_pair_inside_inference_mode_runs():
    with torch.inference_mode():
        report = harness.compare_pair(TOY, dtype=F64)
    assert report.passed, report.format()


@pytest.mark.parametrize("pattern", ["(", "blocks[", "*x"])
def test_a_bad_include_regex_names_the_option(pattern):
    candidate, reference = TOY.build(dtype=F64)
    with pytest.raises(ValueError, match=r"include=.* is not a valid regex"):
        harness.compare(candidate, reference, TOY.inputs(dtype=F64), include=pattern)
    with pytest.raises(ValueError, match=r"include=.* is not a valid regex"):
        harness.Tracer(candidate, include=pattern)


@pytest.mark.parametrize("side", ["candidate", "reference"])
def test_models_on_different_devices_are_refused_up_front_naming_both(side):
    candidate, reference = TOY.build(dtype=F64)
    ran = []
    for model in (candidate, reference):
        model.register_forward_pre_hook(lambda *_: ran.append(1))
    if side == "candidate":
        candidate = candidate.to("meta")
    else:
        reference = reference.to("meta")
    with pytest.raises(ValueError, match=r"candidate on (meta|cpu), reference on (cpu|meta)"):
        harness.compare(candidate, reference, TOY.inputs(dtype=F64))
    assert not ran, "a model ran before the device check"


def test_models_on_two_real_devices_are_named(monkeypatch):
    from harness import guards

    candidate, reference = TOY.build(dtype=F64)
    devices = {id(candidate): {torch.device("cuda:1")}, id(reference): {torch.device("cpu")}}
    monkeypatch.setattr(guards, "_devices", lambda model: devices[id(model)])
    with pytest.raises(ValueError, match=r"candidate is on cuda:1 but the reference is on cpu"):
        harness.compare(candidate, reference, TOY.inputs(dtype=F64))


def test_a_parameter_free_model_next_to_a_meta_model_is_refused():
    with pytest.raises(ValueError, match="meta device"):
        harness.compare(nn.Identity(), nn.Linear(2, 2, device="meta"), torch.ones(2))


def test_an_argument_usage_error_is_one_line_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["compare", "--dtype", "int8"])
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 2 and "\n" not in err, err
    assert err.startswith("error: argument --dtype: invalid choice: 'int8'") and "compare --help" in err, err
