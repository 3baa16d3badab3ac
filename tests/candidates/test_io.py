"""candidates.io: atomic writes and the one state-dict loader the families share."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch
from helpers import write_malicious_checkpoint

from candidates import io as cio
from candidates.recognize import inspect_checkpoint
from candidates.resampler.checkpoint import CheckpointError
from candidates.videomt.convert import load_upstream

VIDEOMT_ARCH = dict(num_heads=2, layer_norm_eps=1e-6, hidden_act="gelu")  # what a VidEoMT release leaves out
STATE = {"fc.weight": torch.arange(6.0).reshape(2, 3), "fc.bias": torch.tensor([1.0, -0.0], dtype=torch.float64),
         "steps": torch.tensor([3], dtype=torch.int64)}


def _assert_bitwise(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and got[key].view(torch.uint8).equal(value.view(torch.uint8)), key


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth", "w.pt", "w.bin", "w.ckpt"])
def test_save_load_round_trip_is_bitwise(tmp_path, name):
    path = cio.save_state_dict(STATE, tmp_path / name)
    assert path == tmp_path / name
    _assert_bitwise(cio.load_state_dict(path), STATE)
    _assert_bitwise(cio.state_dict_from_bytes(path.read_bytes(), path), STATE)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp file left


def test_save_makes_views_contiguous_and_detached(tmp_path):
    weight = torch.randn(3, 4, requires_grad=True)
    state = {"t": weight.t(), "w": weight}
    loaded = cio.load_state_dict(cio.save_state_dict(state, tmp_path / "v.safetensors"))
    assert torch.equal(loaded["t"], weight.detach().t()) and not loaded["w"].requires_grad


def test_save_wrap_nests_a_pickle_and_load_unwraps_it(tmp_path):
    path = cio.save_state_dict(STATE, tmp_path / "w.pth", wrap="model")
    assert torch.load(path, weights_only=True).keys() == {"model"}
    _assert_bitwise(cio.load_state_dict(path), STATE)
    with pytest.raises(ValueError, match="safetensors files hold flat tensor maps; wrap must be None"):
        cio.save_state_dict(STATE, tmp_path / "w.safetensors", wrap="model")


def test_save_refuses_unknown_extensions_without_writing(tmp_path):
    with pytest.raises(ValueError, match=r"w\.npz: unsupported checkpoint extension '\.npz'; expected \.safetensors"):
        cio.save_state_dict(STATE, tmp_path / "w.npz")
    assert list(tmp_path.iterdir()) == []


# --- wrappers --------------------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [
    {"model": STATE, "iteration": torch.tensor(7)},          # detectron2: a tensor beside the wrapper
    {"state_dict": STATE, "epoch": 3, "optimizer_states": []},  # Lightning
    {"module": STATE},                                        # DistributedDataParallel
    {"model": {"module": STATE}, "args": {"lr": 0.1}},        # nested wrappers
    {"model_ema": STATE, "model": {"other": torch.zeros(1)}},  # the EMA weights first, as timm
], ids=["detectron2", "lightning", "ddp", "nested", "ema"])
def test_training_wrappers_are_unwrapped(tmp_path, wrapped):
    torch.save(wrapped, tmp_path / "w.pth")
    _assert_bitwise(cio.load_state_dict(tmp_path / "w.pth"), STATE)
    _assert_bitwise(cio.unwrap_state_dict(wrapped, "in-memory"), STATE)


def test_a_tensor_named_like_a_wrapper_is_a_weight(tmp_path):
    state = {"model": torch.ones(2), "module": torch.zeros(1)}
    _assert_bitwise(cio.unwrap_state_dict(state, "x"), state)


# --- errors name the file and what was expected ----------------------------------------------


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint file at .*missing\.pth"):
        cio.load_state_dict(tmp_path / "missing.pth")
    (tmp_path / "w.npz").write_bytes(b"x")
    expected = r"w\.npz: unsupported checkpoint extension '\.npz'; expected \.safetensors or one of \('\.pth'"
    with pytest.raises(ValueError, match=expected):
        cio.load_state_dict(tmp_path / "w.npz")
    with pytest.raises(ValueError, match=expected):
        cio.state_dict_from_bytes(b"x", tmp_path / "w.npz")


@pytest.mark.parametrize("obj, message", [
    ([torch.zeros(1)], r"list\.pth: expected a state dict \(name -> tensor\), got list$"),
    ({}, r"list\.pth: expected a state dict \(name -> tensor\), got an empty dict$"),
    ({"model": {}}, r"list\.pth: expected a state dict \(name -> tensor\), got an empty dict$"),
    ({"epoch": 3, "args": {"lr": 0.1}}, r"list\.pth: no tensors found; top-level keys are \['args', 'epoch'\]$"),
    ({"w": torch.zeros(1), "epoch": 3}, r"list\.pth: expected a state dict \(name -> tensor\), but 1 entries are "
                                        r"not tensors: \['epoch'\]$"),
], ids=["list", "empty", "empty-wrapped", "no-tensors", "mixed"])
def test_not_a_state_dict_is_a_clear_error(tmp_path, obj, message):
    torch.save(obj, tmp_path / "list.pth")
    with pytest.raises(ValueError, match=message):
        cio.load_state_dict(tmp_path / "list.pth")


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth"])
def test_truncated_file_is_a_value_error_naming_it(tmp_path, name):
    path = cio.save_state_dict(STATE, tmp_path / name)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    kind = "safetensors file" if name.endswith("safetensors") else "torch checkpoint"
    for load in (lambda: cio.load_state_dict(path), lambda: cio.state_dict_from_bytes(path.read_bytes(), path)):
        with pytest.raises(ValueError, match=rf"{name}: not a readable {kind} .*truncated or corrupted\?"):
            load()


def test_a_directory_where_the_checkpoint_should_be_is_named(tmp_path):
    path = tmp_path / "model.pth"
    path.mkdir()
    for load in (cio.load_state_dict, lambda p: load_upstream(p, **VIDEOMT_ARCH), inspect_checkpoint):
        with pytest.raises(IsADirectoryError, match=rf"{path} is a directory, not a checkpoint file"):
            load(path)


def test_naming_file_keeps_the_error_type_and_leaves_named_errors_alone():
    with pytest.raises(CheckpointError, match=r"^ckpt\.pth: bad$"):
        with cio.naming_file("ckpt.pth"):
            raise CheckpointError("bad")
    with pytest.raises(ValueError, match=r"^already names ckpt\.pth$"):
        with cio.naming_file("ckpt.pth"):
            raise ValueError("already names ckpt.pth")
    with pytest.raises(TypeError, match=r"^an argument$"):  # not about the file: unchanged
        with cio.naming_file("ckpt.pth"):
            raise TypeError("an argument")


def test_a_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path):
    marker, path = tmp_path / "pwned.txt", tmp_path / "evil.pth"
    write_malicious_checkpoint(path, {"model": {"w": torch.zeros(1)}}, marker)
    for load in (lambda: cio.load_state_dict(path), lambda: cio.state_dict_from_bytes(path.read_bytes(), path)):
        with pytest.raises(cio.UnsafePickleError, match=r"evil\.pth: holds objects other than tensors .*"
                                                        r"Weights only load failed.* weights_only=True") as info:
            load()
        # a ValueError for callers handling bad user files, an UnpicklingError for torch.load's callers
        assert isinstance(info.value, ValueError) and isinstance(info.value, pickle.UnpicklingError)
        assert "Weights only load failed" in str(info.value.__cause__)
    assert not marker.exists()


def test_a_pickle_with_a_non_tensor_object_is_refused(tmp_path):
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "train.pth")
    with pytest.raises(cio.UnsafePickleError, match=r"train\.pth: holds objects other than tensors"):
        cio.load_state_dict(tmp_path / "train.pth")


# --- atomic writes ---------------------------------------------------------------------------


def test_atomic_write_bytes_replaces_the_file(tmp_path):
    path = tmp_path / "a.json"
    assert cio.atomic_write_bytes(path, b"old") == path
    cio.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_fsync_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    cio.atomic_write_bytes(path, b"old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cio.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        cio.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth"])
def test_a_writer_failing_halfway_leaves_the_old_checkpoint(tmp_path, monkeypatch, name):
    path = cio.save_state_dict(STATE, tmp_path / name)
    before = path.read_bytes()

    def half_then_fail(obj, target, *args, **kwargs):
        Path(target).write_bytes(before[: len(before) // 2])  # a torn write into the temp file
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_fail)
    monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        cio.save_state_dict({"w": torch.ones(1)}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [name]


def test_write_atomically_needs_an_existing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        cio.write_atomically(tmp_path / "nope" / "a.bin", lambda tmp: Path(tmp).write_bytes(b"x"))
    assert list(tmp_path.iterdir()) == []


def test_write_into_a_missing_folder_names_the_folder(tmp_path):
    from candidates.io import atomic_write_bytes

    target = tmp_path / "missing" / "w.bin"
    with pytest.raises(FileNotFoundError, match=r"its folder .*missing does not exist"):
        atomic_write_bytes(target, b"x")


def test_written_files_get_the_umask_mode_like_open(tmp_path):
    import os
    import stat

    from candidates.io import atomic_write_bytes

    umask = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "w.bin", b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.read_bytes() == b"x"


# -- strict loading into a model ------------------------------------------------------------------
def test_load_exactly_loads_a_fitting_state_dict():
    model, source = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    cio.load_exactly(model, source.state_dict(), what="Linear(3, 2)")
    assert torch.equal(model.weight, source.weight) and torch.equal(model.bias, source.bias)


def test_load_exactly_lists_each_misfit_key_with_its_shapes_and_changes_nothing():
    model = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {"weight": torch.zeros(2, 4), "extra": torch.zeros(1)}
    with pytest.raises(ValueError) as info:
        cio.load_exactly(model, state, what="Linear(3, 2)")
    assert str(info.value) == ("checkpoint does not fit Linear(3, 2): 3 mismatched keys\n"
                               "  weight: checkpoint (2, 4) vs model (2, 3)\n"
                               "  bias: missing from checkpoint (model (2,))\n"
                               "  extra: unexpected in checkpoint (1,)")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items()), "a refused load changed the model"


def test_load_exactly_lists_every_key_however_many():
    model = torch.nn.Sequential(*(torch.nn.Linear(1, 1) for _ in range(40)))  # 80 keys
    with pytest.raises(ValueError, match="80 mismatched keys") as info:
        cio.load_exactly(model, {}, what="forty Linears")
    listed = [line.split(":")[0].strip() for line in str(info.value).splitlines()[1:]]
    assert listed == list(model.state_dict()), "the error left keys out"


def test_load_exactly_names_the_source_and_raises_the_family_error():
    class FamilyError(ValueError):
        pass

    with pytest.raises(FamilyError, match=r"^w\.pth \(key prefix 'm\.'\) does not fit Linear\(3, 2\): 1 mismatched keys"):
        cio.load_exactly(torch.nn.Linear(3, 2), {"weight": torch.zeros(2, 3)}, what="Linear(3, 2)",
                         source="w.pth (key prefix 'm.')", error=FamilyError)


def test_load_exactly_ends_the_error_with_the_hint():
    with pytest.raises(ValueError, match=r"\n  bias: missing from checkpoint \(model \(2,\)\)\nuse Linear\(3, 2, bias=False\)$"):
        cio.load_exactly(torch.nn.Linear(3, 2), {"weight": torch.zeros(2, 3)}, what="Linear(3, 2)",
                         hint="use Linear(3, 2, bias=False)")


def test_a_hint_function_is_called_only_when_the_state_does_not_fit():
    calls = []

    def hint() -> str:
        calls.append(1)
        return "a config that fits"

    model = torch.nn.Linear(3, 2)
    cio.load_exactly(model, torch.nn.Linear(3, 2).state_dict(), what="Linear(3, 2)", hint=hint)
    assert calls == [], "the hint was computed for a state dict that fits"
    with pytest.raises(ValueError, match=r"\na config that fits$"):
        cio.load_exactly(model, {}, what="Linear(3, 2)", hint=hint)
    assert calls == [1]


def test_assign_fills_a_model_built_on_the_meta_device():
    source = torch.nn.Linear(3, 2)
    with torch.device("meta"):
        model = torch.nn.Linear(3, 2)
    cio.load_exactly(model, source.state_dict(), what="Linear(3, 2)", assign=True)
    assert not model.weight.is_meta and torch.equal(model.weight, source.weight) and torch.equal(model.bias, source.bias)


def test_assign_keeps_the_stored_dtype_bitwise():
    state = {"weight": torch.randn(2, 3, dtype=torch.float64), "bias": torch.tensor([0.1, -0.0], dtype=torch.float64)}
    model = torch.nn.Linear(3, 2)  # float32
    cio.load_exactly(model, state, what="Linear(3, 2)", assign=True)
    assert model.weight.dtype == torch.float64, "assign=True cast the stored tensor to the model's dtype"
    _assert_bitwise(dict(model.state_dict()), state)


def test_without_assign_a_meta_model_is_refused_rather_than_left_empty():
    with torch.device("meta"):
        model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"Linear\(3, 2\) is on the meta device .* with assign=True to fill it"):
        cio.load_exactly(model, torch.nn.Linear(3, 2).state_dict(), what="Linear(3, 2)")


def test_assign_refuses_to_leave_an_unstored_buffer_on_the_meta_device():
    class WithComputedBuffer(torch.nn.Linear):
        def __init__(self) -> None:
            super().__init__(3, 2)
            self.register_buffer("table", torch.arange(4.0), persistent=False)  # computed, never stored

    with torch.device("meta"):
        model = WithComputedBuffer()
    with pytest.raises(ValueError, match=r"still has tensors on the meta device .*\['table'\]; build the model on a real"):
        cio.load_exactly(model, torch.nn.Linear(3, 2).state_dict(), what="WithComputedBuffer", assign=True)


def test_allow_missing_keys_keep_the_model_values():
    model = torch.nn.Linear(3, 2)
    bias = model.bias.detach().clone()
    weight = torch.ones(2, 3)
    cio.load_exactly(model, {"weight": weight}, what="Linear(3, 2)", allow_missing={"bias"})
    assert torch.equal(model.weight, weight) and torch.equal(model.bias, bias)


def test_allow_missing_excuses_only_the_keys_it_names():
    with pytest.raises(ValueError, match=r"1 mismatched keys\n  weight: missing from checkpoint \(model \(2, 3\)\)$"):
        cio.load_exactly(torch.nn.Linear(3, 2), {}, what="Linear(3, 2)", allow_missing={"bias"})


def test_check_fit_passes_a_fitting_state_without_loading_it():
    with torch.device("meta"):
        model = torch.nn.Linear(3, 2)
    cio.check_fit(model, torch.nn.Linear(3, 2).state_dict(), what="Linear(3, 2)")
    assert model.weight.is_meta, "check_fit loaded the state dict"


def test_check_fit_refuses_a_misfit_state_as_load_exactly_does():
    with torch.device("meta"):
        model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"does not fit Linear\(3, 2\): 1 mismatched keys\n  weight: checkpoint \(2, 4\) "
                                         r"vs model \(2, 3\)$"):
        cio.check_fit(model, {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}, what="Linear(3, 2)")
