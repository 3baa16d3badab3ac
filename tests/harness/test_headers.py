"""harness.headers: a checkpoint's names, shapes and dtypes without torch, or None where torch must decide."""

from __future__ import annotations

import argparse

import pytest
import torch

from candidates.io import load_state_dict, save_state_dict
from harness.headers import TensorHeader, ValuesUnavailable, read_headers
from harness.keymap import KeyTable, Rule
from helpers import write_malicious_checkpoint

MIXED = {
    "w64": torch.randn(3, 4, dtype=torch.float64),
    "w32": torch.randn(2, 3, 5),
    "w16": torch.randn(7, dtype=torch.float16),
    "bf16": torch.randn(6, dtype=torch.bfloat16),
    "steps": torch.tensor([3, -1], dtype=torch.int64),
    "mask": torch.tensor([True, False]),
    "scalar": torch.tensor(2.5),
}


def headers_of(state):
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}


def read(path):
    headers = read_headers(path)
    assert headers is not None, f"read_headers({path}) left the file to torch"
    return headers


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_headers_match_what_torch_loads(tmp_path, suffix):
    path = save_state_dict(MIXED, tmp_path / f"m{suffix}")
    got = {k: (h.shape, h.dtype) for k, h in read(path).items()}
    assert got == headers_of(load_state_dict(path))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_values_read_from_the_file_equal_the_stored_tensor(tmp_path, suffix):
    path = save_state_dict(MIXED, tmp_path / f"m{suffix}")
    headers = read(path)
    for key, tensor in MIXED.items():
        assert headers[key].tolist() == tensor.flatten().tolist(), key


@pytest.mark.parametrize("wrapped", [
    {"model": MIXED, "epoch": 3}, {"state_dict": MIXED, "epoch": 3, "global_step": 7}, {"module": MIXED},
    {"model_ema": MIXED, "model": {"other": torch.zeros(1)}}, {"model": {"module": MIXED}},
])
def test_training_wrappers_are_unwrapped_as_the_loader_does(tmp_path, wrapped):
    path = tmp_path / "w.pth"
    torch.save(wrapped, path)
    assert {k: (h.shape, h.dtype) for k, h in read(path).items()} == headers_of(load_state_dict(path))


def test_parameters_read_as_their_tensors(tmp_path):
    path = tmp_path / "p.pt"
    torch.save({"a": torch.nn.Parameter(torch.arange(4.0))}, path)
    assert read(path)["a"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_view_into_a_larger_storage_reads_its_own_values(tmp_path):
    base = torch.arange(12.0)
    path = tmp_path / "v.pt"
    torch.save({"tail": base[4:9]}, path)  # torch.save keeps the whole storage and an offset
    assert read(path)["tail"].tolist() == [4.0, 5.0, 6.0, 7.0, 8.0]


def test_a_non_contiguous_tensor_has_its_shape_but_no_values(tmp_path):
    path = tmp_path / "t.pt"
    torch.save({"t": torch.arange(6.0).reshape(2, 3).t()}, path)
    header = read(path)["t"]
    assert header.shape == (3, 2)
    with pytest.raises(ValuesUnavailable):
        header.tolist()


def test_a_legacy_pickle_is_left_to_torch(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save(MIXED, path, _use_new_zipfile_serialization=False)
    assert read_headers(path) is None


def test_an_unknown_object_is_left_to_torch(tmp_path):
    path = tmp_path / "ns.pth"
    torch.save({"model": MIXED, "args": argparse.Namespace(lr=0.1)}, path)
    assert read_headers(path) is None


def test_a_pickle_that_runs_code_is_left_to_torch_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = write_malicious_checkpoint(tmp_path / "evil.pth", {"w": torch.zeros(2)}, marker)
    assert read_headers(path) is None
    assert not marker.exists(), "reading the headers ran code from the pickle"


@pytest.mark.parametrize("cut", [4, 20, -10])
def test_a_truncated_safetensors_file_is_left_to_torch(tmp_path, cut):
    path = save_state_dict(MIXED, tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    assert read_headers(path) is None


def test_a_file_that_is_no_state_dict_gets_the_loaders_error(tmp_path):
    path = tmp_path / "list.pt"
    torch.save({"model": {"epoch": 3}}, path)
    with pytest.raises(ValueError) as from_headers:
        read_headers(path)
    with pytest.raises(ValueError) as from_torch:
        load_state_dict(path)
    assert str(from_headers.value) == str(from_torch.value)


def test_a_missing_file_is_left_to_the_loader(tmp_path):
    assert read_headers(tmp_path / "absent.pth") is None


SHAPE_STEPS = [
    ("reshape", (-1,)), ("reshape", ((4, -1),)), ("transpose", (0, 2)), ("transpose", (-1, 0)),
    ("permute", (2, 0, 1)), ("narrow", (1, 1, 2)), ("narrow", (-1, 0, 5)),
]


@pytest.mark.parametrize("op, args", SHAPE_STEPS)
def test_a_layout_step_gives_the_shape_torch_gives(op, args):
    tensor = torch.empty(4, 3, 5, device="meta")
    header = TensorHeader((4, 3, 5), "float32")
    assert getattr(header, op)(*args).shape == tuple(getattr(tensor, op)(*args).shape)


@pytest.mark.parametrize("sizes", [2, [1, 2, 1], 3])
def test_split_gives_the_shapes_torch_gives(sizes):
    tensor = torch.empty(4, 6, device="meta")
    assert [h.shape for h in TensorHeader((4, 6), "float32").split(sizes, 0)] == \
        [tuple(t.shape) for t in tensor.split(sizes, 0)]


def test_cat_adds_the_joined_dimension_and_refuses_mismatched_parts():
    parts = [TensorHeader((2, 3), "float32"), TensorHeader((2, 5), "float32")]
    assert TensorHeader.cat(parts, 1).shape == (2, 8)
    with pytest.raises(ValueError, match=r"cannot concatenate shapes \[\(2, 3\), \(2, 5\)\] along dimension 0"):
        TensorHeader.cat(parts, 0)


def test_a_derived_header_has_no_values():
    stored = TensorHeader((6,), "float32", read=lambda: bytes(24))
    assert stored.tolist() == [0.0] * 6
    with pytest.raises(ValuesUnavailable):
        stored.reshape(2, 3).tolist()


def test_a_key_table_maps_headers_to_the_shapes_it_maps_tensors_to():
    table = KeyTable(
        Rule(("blk.{i}.q.weight", "blk.{i}.k.weight", "blk.{i}.v.weight"), "blocks.{i}.qkv.weight"),
        Rule("blk.{i}.proj", "blocks.{i}.proj.weight", steps=({"op": "transpose", "dims": [0, 1]},)),
        name="toy",
    )
    state = {"blk.0.q.weight": torch.zeros(4, 8), "blk.0.k.weight": torch.zeros(4, 8),
             "blk.0.v.weight": torch.zeros(4, 8), "blk.0.proj": torch.zeros(8, 3)}
    headers = {k: TensorHeader(tuple(v.shape), "float32") for k, v in state.items()}
    from_tensors = {k: tuple(v.shape) for k, v in table.to_candidate(state).items()}
    assert {k: h.shape for k, h in table.to_candidate(headers).items()} == from_tensors
    back = {k: tuple(v.shape) for k, v in table.to_reference(table.to_candidate(state)).items()}
    assert {k: h.shape for k, h in table.to_reference(table.to_candidate(headers)).items()} == back


def test_a_file_with_another_extension_is_left_to_the_loader(tmp_path):
    path = tmp_path / "weights.zip"
    torch.save(MIXED, path)  # a valid torch.save zip, but the loader accepts only checkpoint extensions
    assert read_headers(path) is None


def test_a_safetensors_header_that_disagrees_with_its_data_is_left_to_torch(tmp_path):
    import json
    import struct

    path = save_state_dict({"w": torch.zeros(4, 4)}, tmp_path / "m.safetensors")
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header["w"]["shape"] = [4, 5]  # 80 bytes announced, 64 stored
    raw = json.dumps(header).encode().ljust(n)
    path.write_bytes(data[:8] + raw + data[8 + n:])
    assert read_headers(path) is None


def test_a_zip_checkpoint_missing_a_storage_is_left_to_torch(tmp_path):
    import zipfile

    whole, broken = tmp_path / "whole.pth", tmp_path / "broken.pth"
    torch.save({"a": torch.ones(3), "b": torch.ones(5)}, whole)
    with zipfile.ZipFile(whole) as src, zipfile.ZipFile(broken, "w") as dst:
        kept = [info for info in src.infolist() if not info.filename.endswith("/data/1")]
        for info in kept:
            dst.writestr(info, src.read(info.filename))
    assert read_headers(whole) is not None
    assert read_headers(broken) is None
