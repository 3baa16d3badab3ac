"""harness.trace: every module call recorded in completion order, with its inputs, outputs and statistics."""

from pathlib import Path

import pytest
import torch
from torch import nn

from harness import Tracer
from harness.trace import ROOT, TensorSummary, flatten_tensors
from harness_toys import Net, WithScripted


def test_records_every_call_in_completion_order_with_nesting():
    model = Net(depth=2)
    with Tracer(model) as tracer:
        model(torch.randn(2, 5, 8))
    names = [r.name for r in tracer.records]
    assert names[:5] == ["blocks.0.norm", "blocks.0.fc1", "blocks.0.act", "blocks.0.fc2", "blocks.0"]
    assert names[-1] == ROOT and "head" in names
    by = {r.name: r for r in tracer.records}
    assert by["blocks.0"].contains(by["blocks.0.fc1"]) and not by["blocks.0"].contains(by["blocks.1.fc1"])
    assert by["blocks.0.fc1"].inputs["args.0"].shape == (2, 5, 8)
    assert by["blocks.0.fc1"].outputs[""].shape == (2, 5, 16)


def test_module_called_per_frame_gets_call_indices():
    lin = nn.Linear(3, 3)

    class PerFrame(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, video):  # (T, N, 3)
            return torch.stack([self.lin(frame) for frame in video])

    model = PerFrame()
    with Tracer(model) as tracer:
        model(torch.randn(3, 2, 3))
    assert [r.key for r in tracer.records] == ["lin#0", "lin#1", "lin#2", f"{ROOT}#0"]


def test_flattens_tuples_dicts_and_kwargs():
    class Multi(nn.Module):
        def forward(self, x, *, scale):
            return {"a": x * scale, "pair": (x, None, [x + 1])}

    model = Multi()
    with Tracer(model) as tracer:
        model(torch.ones(2), scale=torch.tensor(3.0))
    record = tracer.records[0]
    assert sorted(record.outputs) == ["a", "pair.0", "pair.2.0"]
    assert sorted(record.inputs) == ["args.0", "kwargs.scale"]
    assert flatten_tensors(torch.ones(1)) == {"": torch.ones(1)}


def test_summary_mode_keeps_statistics_only():
    model = Net(depth=1)
    with Tracer(model, mode="summary") as tracer:
        model(torch.randn(2, 5, 8))
    leaf = tracer.records[0].outputs[""]
    assert isinstance(leaf, TensorSummary) and leaf.shape == (2, 5, 8) and leaf.dtype == "float32"
    assert abs(leaf.mean) < 1 and leaf.nonfinite == 0


def test_include_filter_limits_hooked_modules():
    model = Net(depth=2)
    with Tracer(model, include=r"fc1$") as tracer:
        model(torch.randn(2, 5, 8))
    assert [r.name for r in tracer.records] == ["blocks.0.fc1", "blocks.1.fc1", ROOT]


def test_hooks_are_removed_after_an_exception_inside_forward():
    model = Net(depth=2)

    def boom(_module, _args):
        raise RuntimeError("boom")

    model.blocks[1].fc2.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        with Tracer(model) as tracer:
            model(torch.randn(2, 5, 8))
    assert not tracer.active
    hooked = [m for m in model.modules() if m._forward_pre_hooks or m._forward_hooks]
    assert hooked == [model.blocks[1].fc2]  # only the test's own hook remains
    assert len(model.blocks[1].fc2._forward_pre_hooks) == 1


def test_first_module_producing_nan_is_recorded():
    model = Net(depth=2)
    with torch.no_grad():
        model.blocks[1].fc1.weight[0, 0] = float("nan")
    with Tracer(model) as tracer:
        model(torch.randn(2, 5, 8))
    assert tracer.first_nonfinite == "blocks.1.fc1#0"


def test_a_tracer_needs_a_module():
    with pytest.raises(TypeError, match=r"Tracer\(model\) must be an nn.Module, got str 'model'"):
        Tracer("model")  # type: ignore[arg-type]


def test_a_tracer_names_its_modes():
    with pytest.raises(ValueError, match="mode must be one of 'full', 'summary', got 'everything'"):
        Tracer(Net(), mode="everything")  # type: ignore[arg-type]


def test_summary_statistics_match_torch_and_count_nonfinite():
    x = torch.randn(3, 50, dtype=torch.float64) * 3 + 1
    s = TensorSummary.of(x)
    assert s.mean == pytest.approx(float(x.mean())) and s.std == pytest.approx(float(x.std()))
    assert s.absmax == pytest.approx(float(x.abs().max())) and s.nonfinite == 0
    y = x.clone()
    y[0, 0], y[1, 1] = float("nan"), float("-inf")
    t = TensorSummary.of(y)
    finite = y[torch.isfinite(y)]
    assert t.nonfinite == 2 and t.mean == pytest.approx(float(finite.mean()))
    assert TensorSummary.of(torch.full((2,), float("nan"))).nonfinite == 2
    assert TensorSummary.of(torch.tensor([1, -5, 2])).absmax == 5.0


def test_full_mode_copies_are_shared_only_while_the_tensor_is_unchanged():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Identity()
            self.b = nn.ReLU(inplace=True)

        def forward(self, x):
            y = self.a(x * 1.0)  # Identity: y is the very tensor a received
            return self.b(y)  # modifies y in place after it was recorded

    model = InPlace()
    x = torch.tensor([-1.0, 2.0])
    with Tracer(model) as tracer:
        model(x)
    by = {r.name: r for r in tracer.records}
    assert by["a"].inputs["args.0"] is by["a"].outputs[""]  # one copy for an unchanged tensor
    assert torch.equal(by["a"].outputs[""], torch.tensor([-1.0, 2.0]))  # not clobbered by ReLU_
    assert torch.equal(by["b"].outputs[""], torch.tensor([0.0, 2.0]))


class _ChannelsLast(nn.Module):
    """A conv whose output a norm reads as a channels-last view (the ConvNeXt block's layout)."""

    def __init__(self, in_place: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = nn.LayerNorm(4)
        self.in_place = in_place

    def forward(self, x):
        y = self.conv(x)
        if self.in_place:
            y.mul_(2)  # changes the memory the conv's record summarized
        return self.norm(y.permute(0, 2, 3, 1))


def _summaries_computed(model: nn.Module, x: torch.Tensor, monkeypatch) -> tuple[Tracer, int]:
    computed = []
    of = TensorSummary.of.__func__
    monkeypatch.setattr(TensorSummary, "of", classmethod(lambda cls, t: computed.append(t.shape) or of(cls, t)))
    with torch.no_grad(), Tracer(model, mode="summary") as tracer:
        model(x)
    return tracer, len(computed)


def test_a_permuted_view_between_modules_takes_its_sources_statistics_with_its_own_shape(monkeypatch):
    model, x = _ChannelsLast(), torch.randn(2, 4, 6, 6)
    tracer, _ = _summaries_computed(model, x, monkeypatch)
    with torch.no_grad():
        fresh = TensorSummary.of(model.conv(x).permute(0, 2, 3, 1))
    assert tracer.by_key()["norm#0"].inputs["args.0"] == fresh


def test_a_permuted_view_between_modules_is_not_summarized_again(monkeypatch):
    _, computed = _summaries_computed(_ChannelsLast(), torch.randn(2, 4, 6, 6), monkeypatch)
    assert computed == 3, f"summaries computed: {computed}; expected 3 (input, conv output, norm output)"


def test_a_view_of_memory_changed_in_place_since_is_summarized_again(monkeypatch):
    model, x = _ChannelsLast(in_place=True), torch.randn(2, 4, 6, 6)
    tracer, computed = _summaries_computed(model, x, monkeypatch)
    with torch.no_grad():
        fresh = TensorSummary.of((model.conv(x) * 2).permute(0, 2, 3, 1))
    assert computed == 4 and tracer.by_key()["norm#0"].inputs["args.0"] == fresh


def test_entering_an_active_tracer_again_is_refused():
    tracer = Tracer(Net())
    with tracer:
        with pytest.raises(RuntimeError, match="already active"):
            tracer.__enter__()
    assert not tracer.active


class Widen(nn.Module):
    """Three large outputs in a row, the middle one channels-last (a permuted dense tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Identity(), nn.Identity(), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x * 2)
        z = self.b(y.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2) + 1)
        return self.c(z - 3)


def _large() -> torch.Tensor:
    return torch.randn(1, 8, 128, 256, dtype=torch.float64)  # 2 MiB: above the size cloned one by one


def test_large_copies_are_packed_into_shared_blocks_not_allocated_one_by_one():
    model = Widen()
    with Tracer(model) as tracer:
        model(_large())
    outputs = [tracer.by_key()[f"{name}#0"].outputs[""] for name in ("a", "b", "c")]
    assert len({o.untyped_storage().data_ptr() for o in outputs}) == 1


def test_a_packed_copy_keeps_the_values_and_strides_of_what_it_copies():
    x = _large()
    model = Widen()
    with Tracer(model) as tracer:
        model(x)
    b = tracer.by_key()["b#0"].outputs[""]
    expected = (x * 2).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2) + 1
    assert b.stride() == expected.stride() and torch.equal(b, expected)


def test_a_packed_copy_does_not_follow_later_changes_to_the_original():
    x = _large()
    before = x.clone()
    layer = nn.Identity()
    with Tracer(layer) as tracer:
        layer(x)
    x.add_(1.0)
    assert torch.equal(tracer.records[0].outputs[""], before)


# -- spilling copies to files -----------------------------------------------------------------------
def _trace(model, x, **options):
    with torch.no_grad(), Tracer(model, **options) as tracer:
        model(x)
    return tracer


def _resident_kib(tensor: torch.Tensor) -> int:
    """Resident KiB of the memory mapping holding ``tensor`` (/proc/self/smaps)."""
    address, rss, inside = tensor.untyped_storage().data_ptr(), None, False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            low, high = (int(part, 16) for part in head.split("-"))
            inside = low <= address < high
        elif inside and line.startswith("Rss:"):
            rss = int(line.split()[1])
            inside = False
    assert rss is not None, f"no mapping of /proc/self/smaps holds address {address:#x}"
    return rss


def test_a_spilled_trace_keeps_what_an_in_memory_trace_keeps(tmp_path):
    x = _large()
    kept = {r.key: r.outputs[""] for r in _trace(Widen(), x).records}
    spilled = {r.key: r.outputs[""] for r in _trace(Widen(), x, spill=tmp_path).records}
    assert spilled.keys() == kept.keys()
    for key, copy in spilled.items():
        assert copy.stride() == kept[key].stride() and torch.equal(copy, kept[key]), key


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="pages are handed back on Linux")
def test_spilled_copies_leave_resident_memory_until_read_again(tmp_path):
    tracer = _trace(Widen(), _large(), spill=tmp_path)
    copy = tracer.by_key()["c#0"].outputs[""]  # 2 MiB in a 256 MiB file-backed block
    assert _resident_kib(copy) < 256, "the tracer kept its spilled block resident after the forward"
    copy.sum()
    assert _resident_kib(copy) >= 2048, "reading a spilled copy should bring its pages back"
    tracer.release()
    assert _resident_kib(copy) < 256, "release() left the read pages resident"


def test_a_spill_leaves_no_file_in_its_folder(tmp_path):
    tracer = _trace(Widen(), _large(), spill=tmp_path)
    assert tracer.records and list(tmp_path.iterdir()) == []


def test_spill_names_an_existing_folder(tmp_path):
    with pytest.raises(ValueError, match=r"spill folder .*missing does not exist; create it, or pass spill=True"):
        Tracer(Widen(), spill=tmp_path / "missing")
    with pytest.raises(TypeError, match=r"spill must be a folder path, True \(the temp folder\), 'auto' or None, got int 3"):
        Tracer(Widen(), spill=3)


def _disk_full(monkeypatch) -> None:
    import errno
    import os

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)


def test_a_full_spill_disk_is_an_oserror_naming_the_folder(tmp_path, monkeypatch):
    _disk_full(monkeypatch)
    with pytest.raises(OSError, match=rf"cannot spill the trace to {tmp_path} \(256 MiB more\): No space left"):
        _trace(Widen(), _large(), spill=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_auto_spill_keeps_its_allowance_in_memory_and_spills_the_rest(small_auto_spill):
    tracer = _trace(Widen(), _large(), spill="auto")
    copies = {c.data_ptr(): c for r in tracer.records for c in [*r.inputs.values(), *r.outputs.values()]}.values()
    in_memory = [c for c in copies if tracer._arena.in_memory(c)]
    assert tracer.spill_allowance == 2 * 2**20
    assert len(in_memory) == 1, f"{len(in_memory)} of {len(copies)} copies in memory; the 2 MiB allowance holds one"
    assert tracer.spilled_bytes == (len(copies) - 1) * _large().nbytes
    assert list(small_auto_spill.iterdir()) == [], "the spill left files behind"


def test_auto_spill_stays_in_memory_when_the_temp_folder_is_in_memory(small_auto_spill, monkeypatch):
    from harness import trace

    monkeypatch.setattr(trace, "_filesystem", lambda folder: "tmpfs")
    tracer = _trace(Widen(), _large(), spill="auto")
    assert tracer.spilled_bytes == 0
    overflow, reason = tracer.spill_declined
    assert overflow > 0 and f"the temp folder {small_auto_spill} is itself in memory (tmpfs)" in reason, reason


def test_auto_spill_goes_on_in_memory_when_the_disk_is_full(small_auto_spill, monkeypatch):
    _disk_full(monkeypatch)
    tracer = _trace(Widen(), _large(), spill="auto")
    assert tracer.spilled_bytes == 0 and len(tracer.records) == 4
    overflow, reason = tracer.spill_declined
    assert f"cannot spill the trace to {small_auto_spill}" in reason and "No space left" in reason, reason


def test_an_auto_spill_within_its_allowance_declines_nothing(small_auto_spill, monkeypatch):
    from harness import trace

    monkeypatch.setattr(trace, "AUTO_IN_MEMORY", 64 * 2**20)
    monkeypatch.setattr(trace, "_filesystem", lambda folder: "tmpfs")
    tracer = _trace(Widen(), _large(), spill="auto")
    assert tracer.spilled_bytes == 0 and tracer.spill_declined is None


def test_the_filesystem_of_a_folder_is_read_from_the_mount_table():
    from harness import trace

    assert trace._filesystem(Path("/proc/self")) == "proc"


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_a_scripted_submodule_is_traced_as_part_of_its_caller():
    tracer = _trace(WithScripted(), torch.randn(3, 4))
    assert [r.name for r in tracer.records] == ["out", ROOT]


class NanBeforeHead(nn.Module):
    """Makes a NaN in its own code, then hands it to a submodule that computes correctly."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.log())  # log of a negative value: NaN, made here


def test_the_first_nonfinite_call_is_the_one_that_made_it_not_one_that_received_it():
    tracer = _trace(NanBeforeHead(), -torch.ones(3, 4))
    assert tracer.first_nonfinite == f"{ROOT}#0"


def test_a_copy_several_records_hold_is_checked_for_nan_once(monkeypatch):
    import harness.trace

    checked = []
    check = harness.trace._nonfinite
    monkeypatch.setattr(harness.trace, "_nonfinite", lambda leaf: checked.append(leaf) or check(leaf))
    model = nn.Sequential(nn.Linear(4, 4), nn.Identity())  # the Identity and the root return the Linear's output
    with torch.no_grad(), Tracer(model) as tracer:
        model(torch.randn(2, 4))
    held = [r.outputs[""] for r in tracer.records]
    assert len(held) == 3 and held[0] is held[1] is held[2]
    assert len(checked) == 1, f"the one copy was summed for NaN {len(checked)} times"
