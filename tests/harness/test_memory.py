"""A full-mode trace that would not fit in memory is refused from an estimate, before the allocator
fails, with one line suggesting --summary; mode="auto" (--auto-summary) switches to it instead;
spill (--spill) keeps the large copies in files instead, read back as they are measured; by
default (spill="auto") the copies beyond each trace's first 256 MiB go there.

Available memory is set by replacing :func:`harness.memory.available_bytes`."""

import pytest
import torch

import harness
from harness import cli, memory
from harness.memory import MemoryBudget, TraceTooLarge
from harness_toys import TOY

F64 = torch.float64


def _full_trace_bytes(model, call) -> int:
    """What a full trace of ``model`` really keeps (measured with a budget that never refuses)."""
    budget = MemoryBudget(10**15)
    with torch.no_grad(), harness.Tracer(model, budget=budget):
        call(model)
    return sum(budget._kept.values())


@pytest.fixture
def toy():
    candidate, reference = TOY.build(dtype=F64)
    return candidate, reference, TOY.inputs(dtype=F64)


@pytest.fixture
def memory_of(monkeypatch):
    def set_available(nbytes):
        monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": nbytes)

    return set_available


def test_a_trace_that_cannot_fit_is_refused_before_it_completes(toy, memory_of):
    candidate, reference, call = toy
    memory_of(_full_trace_bytes(candidate, call) // 2)
    with pytest.raises(TraceTooLarge) as caught:
        harness.compare(candidate, reference, call)
    exc = caught.value
    assert isinstance(exc, ValueError) and isinstance(exc, MemoryError)
    assert exc.side == "candidate" and exc.started < exc.modules, "refused only after the whole trace was kept"
    message = str(exc)
    assert "\n" not in message and "--summary" in message and "would need about" in message, message


def test_the_estimate_is_close_to_what_both_traces_keep(toy, memory_of):
    candidate, reference, call = toy
    needed = _full_trace_bytes(candidate, call) + _full_trace_bytes(reference, call)
    memory_of(needed // 4)
    with pytest.raises(TraceTooLarge) as caught:
        harness.compare(candidate, reference, call)
    assert needed / 2 <= caught.value.needed <= needed * 2, (
        f"estimated {caught.value.needed:.0f} bytes for traces that keep {needed}")


def test_room_for_one_trace_but_not_two_is_refused_within_the_first(toy, memory_of):
    candidate, reference, call = toy
    one = _full_trace_bytes(candidate, call)
    memory_of(int(1.5 * one / memory.HEADROOM))  # the candidate's trace fits, both do not
    with pytest.raises(TraceTooLarge) as caught:
        harness.compare(candidate, reference, call)
    assert caught.value.side == "candidate" and caught.value.kept < one, (
        f"refused after keeping {caught.value.kept} of the candidate's {one} bytes")


def test_a_projection_is_trusted_once_half_the_modules_have_started():
    budget = MemoryBudget(1000)  # a limit of 800 bytes for two traces
    tracer = object()
    budget.charge(300, tracer, started=1, modules=4)  # projects 2 x 1200, but a quarter is too early to tell
    with pytest.raises(TraceTooLarge) as caught:
        budget.charge(1, tracer, started=2, modules=4)  # half: 2 x 602 > 800
    assert caught.value.side == "candidate" and caught.value.needed == pytest.approx(2 * 602), str(caught.value)


def test_a_refused_comparison_leaves_no_hooks_and_the_models_unchanged(toy, memory_of):
    candidate, reference, call = toy
    before = {k: v.clone() for k, v in candidate.state_dict().items()}
    memory_of(1000)
    with pytest.raises(TraceTooLarge):
        harness.compare(candidate, reference, call)
    assert not candidate._forward_hooks and not candidate._forward_pre_hooks
    assert all(not m._forward_hooks for m in candidate.modules())
    assert all(torch.equal(v, candidate.state_dict()[k]) for k, v in before.items())


def test_auto_mode_switches_to_summary_and_says_why(toy, memory_of):
    candidate, reference, call = toy
    with torch.no_grad():
        candidate.blocks[2].norm.eps = 1e-3
    memory_of(1000)
    report = harness.compare(candidate, reference, call, mode="auto")
    assert report.mode == "summary" and not report.passed and report.first_divergence == "blocks.2.norm"
    assert report.notes[0].startswith("switched to summary mode: a full-mode trace would need about"), report.notes


def test_auto_mode_stays_full_when_the_trace_fits(toy, memory_of):
    candidate, reference, call = toy
    memory_of(10**12)
    report = harness.compare(candidate, reference, call, mode="auto")
    assert report.mode == "full" and report.passed and not any("summary" in n for n in report.notes)


def test_summary_mode_is_never_refused(toy, memory_of):
    candidate, reference, call = toy
    memory_of(1)
    assert harness.compare(candidate, reference, call, mode="summary").passed


def test_unknown_available_memory_refuses_nothing(toy, memory_of):
    candidate, reference, call = toy
    memory_of(None)
    assert harness.compare(candidate, reference, call).passed


@pytest.fixture
def toy_cli(monkeypatch):
    harness.list_pairs()
    monkeypatch.setitem(harness.pairs._REGISTRY, TOY.name, TOY)


def test_cli_refuses_with_one_line_suggesting_summary(toy_cli, memory_of, capsys):
    memory_of(1000)
    assert cli.main(["compare", "toy_mlp", "--dtype", "float64"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: a full-mode trace would need about") and "--summary" in err, err


def test_cli_auto_summary_switches_and_passes(toy_cli, memory_of, capsys):
    memory_of(1000)
    assert cli.main(["compare", "toy_mlp", "--dtype", "float64", "--auto-summary"]) == 0
    assert "note: switched to summary mode" in capsys.readouterr().out


def test_available_memory_is_known_on_linux_cpu_and_unknown_on_meta():
    available = memory.available_bytes("cpu")
    assert available is None or available > 0
    assert memory.available_bytes("meta") is None


# -- spilling the traces to files --------------------------------------------------------------------
class Wide(torch.nn.Module):
    """Activations of 4 MiB at float64: above the size a trace clones one by one, so they spill."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(512, 512), torch.nn.Linear(512, 512), torch.nn.Linear(512, 256)
        self.act = torch.nn.GELU()

    def forward(self, x):
        return self.c(self.act(self.b(self.a(x))))


def _wide_pair(bug: bool):
    torch.manual_seed(0)
    reference = Wide().double().eval()
    candidate = Wide().double().eval()
    candidate.load_state_dict(reference.state_dict())
    if bug:
        candidate.act = torch.nn.GELU(approximate="tanh")
    return candidate, reference, torch.randn(1024, 512, dtype=F64, generator=torch.Generator().manual_seed(1))


def _verdict(report) -> dict:
    """What a report says, without how long it took and the notes (which name the spill folder)."""
    return {k: v for k, v in report.to_dict().items() if k not in ("seconds", "notes")}


@pytest.mark.parametrize("bug", [False, True], ids=["passing", "failing"])
def test_a_spilled_comparison_reports_what_an_in_memory_one_reports(tmp_path, bug):
    in_memory = harness.compare(*_wide_pair(bug))
    spilled = harness.compare(*_wide_pair(bug), spill=tmp_path)
    assert in_memory.passed is not bug and (in_memory.culprit == "act") is bug
    assert _verdict(spilled) == _verdict(in_memory)
    assert any(f"MiB of trace copies were kept in files in {tmp_path}" in n for n in spilled.notes), spilled.notes
    assert list(tmp_path.iterdir()) == [], "the spill left files behind"


def test_spilled_copies_are_not_charged_to_the_memory_budget(tmp_path, memory_of):
    candidate, reference, x = _wide_pair(bug=False)
    memory_of(8 * 2**20)  # a trace keeps about 24 MiB per model
    with pytest.raises(TraceTooLarge):
        harness.compare(candidate, reference, x)
    assert harness.compare(candidate, reference, x, spill=tmp_path).passed


def test_cli_spill_keeps_the_trace_in_files_in_the_folder_given(toy_cli, tmp_path, capsys):
    assert cli.main(["compare", "toy_mlp", "--dtype", "float64", "--spill", str(tmp_path)]) == 0
    # the toy's activations are small: kept in memory, and the note says so
    assert f"note: spill: nothing went to {tmp_path}; only full-mode copies of 1 MiB" in capsys.readouterr().out


def test_cli_spill_to_a_missing_folder_is_a_one_line_usage_error(toy_cli, tmp_path, capsys):
    assert cli.main(["compare", "toy_mlp", "--spill", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"spill folder {tmp_path / 'missing'} does not exist" in err, err


def test_an_auto_spilled_comparison_reports_what_an_in_memory_one_reports(small_auto_spill):
    in_memory = harness.compare(*_wide_pair(bug=True), spill=False)
    auto = harness.compare(*_wide_pair(bug=True))
    assert _verdict(auto) == _verdict(in_memory)
    assert not any(n.startswith("spill:") for n in in_memory.notes), in_memory.notes
    note = next((n for n in auto.notes if n.startswith("spill:")), None)
    assert note is not None and "MiB of trace copies beyond the first 2 MiB per trace were kept in files in " \
        f"{small_auto_spill}" in note and "--no-spill" in note, auto.notes
    assert list(small_auto_spill.iterdir()) == [], "the spill left files behind"


def test_a_comparison_within_the_auto_spill_allowance_says_nothing_about_spilling(toy):
    report = harness.compare(*toy)
    assert report.passed and not any(n.startswith("spill:") for n in report.notes), report.notes


def test_auto_spill_declined_on_a_memory_folder_is_a_note(small_auto_spill, monkeypatch):
    from harness import trace

    monkeypatch.setattr(trace, "_filesystem", lambda folder: "tmpfs")
    report = harness.compare(*_wide_pair(bug=False))
    assert report.passed
    assert any("MiB of trace copies stayed in memory: the temp folder" in n and "(tmpfs)" in n
               for n in report.notes), report.notes


def test_cli_no_spill_keeps_the_trace_in_memory(toy_cli, small_auto_spill, capsys):
    assert cli.main(["compare", "toy_mlp", "--dtype", "float64", "--no-spill"]) == 0
    assert "spill:" not in capsys.readouterr().out


def test_cli_spill_and_no_spill_together_are_a_usage_error(toy_cli, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["compare", "toy_mlp", "--spill", "--no-spill"])
    assert exit.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
