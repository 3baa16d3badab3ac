"""harness.progress: each stage of a comparison named on stderr, only when asked for or on a terminal."""

import torch

import harness
from harness import progress
from harness_toys import TOY


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
