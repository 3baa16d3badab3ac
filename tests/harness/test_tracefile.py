"""Trace files: a recorded reference compares like a live one; bad files and wrong weights are refused."""

from __future__ import annotations

import copy
import json
import os
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

import harness
from harness.tracefile import RecordedModule, load_trace, record

from harness_toys import Net, make_inputs


def _models(seed: int = 0) -> tuple[Net, Net, torch.Tensor]:
    torch.manual_seed(seed)
    reference = Net().double().eval()
    candidate = copy.deepcopy(reference)
    return candidate, reference, make_inputs(torch.Generator().manual_seed(1)).double()


@pytest.fixture
def recorded(tmp_path):
    candidate, reference, x = _models()
    path = record(reference, x, tmp_path / "ref.trace")
    return candidate, reference, x, path


def test_a_trace_is_a_safetensors_file_holding_every_call(recorded):
    _, reference, x, path = recorded
    tensors = load_file(path)
    trace = load_trace(path)
    with harness.Tracer(reference) as live:
        reference(x.clone())
    assert [r.key for r in trace.records()] == [r.key for r in live.records]
    assert all(torch.equal(a.primary, b.primary) for a, b in zip(trace.records(), live.records))
    assert len(tensors) == len(trace.meta["tensors"]) and torch.equal(trace.call().args[0], x)


def test_comparing_against_a_trace_gives_the_live_verdict_and_culprit(recorded):
    candidate, reference, x, path = recorded
    candidate.blocks[1].norm.eps = 1e-2
    live = harness.compare(candidate, reference, x)
    replayed = harness.compare(candidate, load_trace(path))
    assert (replayed.passed, replayed.first_divergence, replayed.culprit) == \
        (live.passed, live.first_divergence, live.culprit) == (False, "blocks.1.norm", "blocks.1.norm")
    assert [(r.key, r.metrics.max_abs, r.status) for r in replayed.rows] == \
        [(r.key, r.metrics.max_abs, r.status) for r in live.rows]


def test_the_culprit_search_reruns_candidate_modules_on_recorded_inputs(recorded):
    candidate, _, _, path = recorded
    candidate.blocks[0].act.approximate = "tanh"
    report = harness.compare(candidate, load_trace(path))
    reran = [r.key for r in report.rows if r.reran]
    assert report.culprit == "blocks.0.act" and "blocks.1#0" in reran, report.format()
    assert isinstance(report.rows[0].match.reference.module, RecordedModule)


def test_a_candidate_with_other_weights_is_refused_naming_the_file(recorded, tmp_path):
    other, _, _ = _models(seed=5)
    with pytest.raises(ValueError, match=r"weights fingerprint of trace .*ref\.trace"):
        harness.compare(other, load_trace(recorded[3]))


def test_a_weight_changed_after_the_transfer_is_named(tmp_path):
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)).double()
    path = record(reference, torch.randn(2, 64, dtype=torch.float64), tmp_path / "ref.trace")
    candidate = copy.deepcopy(reference)
    with torch.no_grad():
        candidate[1].weight.mul_(1.01)
    with pytest.raises(ValueError, match=r"the values of 1\.weight are not the recorded model's"):
        harness.compare(candidate, load_trace(path))


def test_a_truncated_trace_is_refused_naming_the_file(recorded, tmp_path):
    data = recorded[3].read_bytes()
    cut = tmp_path / "cut.trace"
    cut.write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"cut\.trace is truncated"):
        load_trace(cut)
    cut.write_bytes(data[:20])
    with pytest.raises(ValueError, match=r"cut\.trace is not a trace file"):
        load_trace(cut)


def test_a_checkpoint_or_other_file_is_refused_as_foreign(tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(3)}, checkpoint)
    with pytest.raises(ValueError, match=r"model\.safetensors is not a trace file: no 'harness_trace' metadata"):
        load_trace(checkpoint)
    text = tmp_path / "notes.trace"
    text.write_text("hello, this is not a trace at all")
    with pytest.raises(ValueError, match=r"notes\.trace is not a trace file"):
        load_trace(text)


def _rewritten(path, target, edit) -> None:
    """``path``'s trace written to ``target`` with ``edit(meta, header)`` applied to its metadata
    and safetensors header (the tensor bytes kept)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["harness_trace"])
    edit(meta, header)
    header["__metadata__"]["harness_trace"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    target.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def test_a_newer_format_version_is_refused(recorded, tmp_path):
    _rewritten(recorded[3], tmp_path / "newer.trace", lambda meta, header: meta.update(version=99))
    with pytest.raises(ValueError, match=r"newer\.trace is trace format version 99"):
        load_trace(tmp_path / "newer.trace")


def _first_output(meta: dict) -> str:
    return next(iter(meta["outputs"].values()))


@pytest.mark.parametrize("edit, problem", [
    (lambda meta, header: meta.pop("calls"), "metadata field 'calls' is None"),
    (lambda meta, header: meta["calls"][0].update(start="1"), "call 0 has no valid 'start'"),
    (lambda meta, header: meta.update(dtype="float99"), "dtype 'float99' is no torch dtype"),
    (lambda meta, header: meta.update(version="1"), "its format version is '1', not a number"),
    (lambda meta, header: header.pop(_first_output(meta)), "the metadata refers to tensors the file does not hold"),
    (lambda meta, header: header[_first_output(meta)].update(dtype="F32"), "bytes hold no F32 tensor of shape"),
    (lambda meta, header: header[_first_output(meta)].update(dtype="Q7"), "unknown dtype 'Q7'"),
])
def test_a_damaged_trace_is_refused_naming_the_file_and_the_damage(recorded, tmp_path, edit, problem):
    _rewritten(recorded[3], tmp_path / "damaged.trace", edit)
    with pytest.raises(ValueError, match=r"damaged\.trace is damaged: .*record the trace again") as refused:
        load_trace(tmp_path / "damaged.trace")
    assert problem in str(refused.value)


def test_tensors_reach_the_disk_while_the_model_runs(tmp_path):
    sizes = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            # streamed into the hidden temporaries folder, where no reader takes it for a result
            data = list((tmp_path / ".partial").glob("t.trace.data.*.tmp"))
            sizes.append(sum(p.stat().st_size for p in data))
            return x

    model = torch.nn.Sequential(torch.nn.Linear(256, 256), Probe(), torch.nn.Linear(256, 4)).double()
    record(model, torch.randn(64, 256, dtype=torch.float64), tmp_path / "t.trace")
    # by the time the second module runs, the first one's input and output are on disk
    assert sizes and sizes[0] >= 2 * 64 * 256 * 8, sizes
    assert [p.name for p in tmp_path.iterdir()] == ["t.trace"], "temporary files left behind"


def test_a_failed_recording_leaves_no_file(tmp_path):
    class Boom(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        record(torch.nn.Sequential(torch.nn.Linear(2, 2), Boom()), torch.randn(1, 2), tmp_path / "t.trace")
    assert list(tmp_path.iterdir()) == []


def test_compact_precision_states_its_error_and_widens_the_tolerance(tmp_path):
    candidate, reference, x = _models()
    path = record(reference, x, tmp_path / "half.trace", precision="float16")
    report = harness.compare(candidate, load_trace(path))
    note = next(n for n in report.notes if "stores tensors in float16" in n)
    assert report.passed and "relative" in note, report.format()
    assert load_trace(path).storage_error["max_rel"] > 1e-5
    assert os.path.getsize(path) < os.path.getsize(record(reference, x, tmp_path / "full.trace"))


def test_include_keeps_full_tensors_only_for_the_chosen_modules(tmp_path):
    candidate, reference, x = _models()
    path = record(reference, x, tmp_path / "some.trace", include=r"^blocks\.1")
    trace = load_trace(path)
    full = {r.key for r in trace.records() if isinstance(r.primary, torch.Tensor)}
    assert "blocks.1.fc1#0" in full and "blocks.0.fc1#0" not in full and "<root>#0" in full
    candidate.blocks[1].fc1.bias.data.add_(0.0)  # unchanged weights: the comparison must pass
    assert harness.compare(candidate, trace).passed


def test_inputs_other_than_the_recorded_ones_are_refused(recorded):
    candidate, _, x, path = recorded
    with pytest.raises(ValueError, match="differ from those recorded"):
        harness.compare(candidate, load_trace(path), x + 1)
    assert harness.compare(candidate, load_trace(path), x.clone()).passed


def test_the_environment_and_source_are_recorded(recorded):
    trace = load_trace(recorded[3])
    assert trace.environment["versions"]["torch"] == torch.__version__
    assert trace.dtype == torch.float64 and trace.device == "cpu" and trace.source == "Net"


def test_recorded_modules_keep_their_settings_so_an_attribute_diff_names_the_change(recorded):
    from harness.diagnose import attribute_diff

    candidate, _, _, path = recorded
    candidate.blocks[2].norm.eps = 1e-3
    report = harness.compare(candidate, load_trace(path))
    row = next(r for r in report.rows if r.candidate == report.culprit)
    found = [f["text"] for f in attribute_diff(row.match.candidate.module, row.match.reference.module, report.culprit)]
    assert found == ["blocks.2.norm: LayerNorm.eps 0.001 in the candidate, 1e-06 in the reference"], found


def test_a_candidate_in_another_dtype_is_refused_before_the_fingerprint(recorded):
    candidate, _, _, path = recorded
    with pytest.raises(TypeError, match=r"candidate parameters are torch.float32 but trace .*ref\.trace was recorded in torch.float64"):
        harness.compare(candidate.float(), load_trace(path))


def test_a_trace_path_under_a_file_names_that_file(tmp_path):
    candidate, reference, x = _models()
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    with pytest.raises(NotADirectoryError, match=r"notes\.txt is a file, not a folder"):
        record(reference, x, tmp_path / "notes.txt" / "ref.trace")
