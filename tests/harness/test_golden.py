"""harness.golden: values diffed against golden files, and golden files that are valid JSON but hold a broken
value (an error naming the file and the path inside it)."""

import json

import pytest
import torch

from harness import golden
from harness.golden import GoldenFileError


def _tensor(**spec):
    return {"__tensor__": {"dtype": "float32", "shape": [2], "data": [1.0, 2.0]} | spec}


BROKEN = {
    "shape-and-data-disagree": (_tensor(shape=[2, 2]), "$.value.__tensor__", "holds 4 values but data has 2"),
    "unknown-dtype": (_tensor(dtype="float33"), "$.value.__tensor__.dtype", "'float33' is not a torch dtype"),
    "dtype-names-no-dtype": (_tensor(dtype="nn"), "$.value.__tensor__.dtype", "'nn' is not a torch dtype"),
    "dtype-not-a-string": (_tensor(dtype=32), "$.value.__tensor__.dtype", "32 is not a torch dtype"),
    "missing-data": ({"__tensor__": {"dtype": "float32", "shape": [2]}}, "$.value.__tensor__", "missing data"),
    "missing-everything": ({"__tensor__": {}}, "$.value.__tensor__", "missing dtype, shape, data"),
    "spec-not-an-object": ({"__tensor__": [1, 2]}, "$.value.__tensor__", "expected an object"),
    "shape-not-a-list": (_tensor(shape="2"), "$.value.__tensor__.shape", "expected a list of sizes"),
    "negative-size": (_tensor(shape=[-2]), "$.value.__tensor__.shape", "expected a list of sizes"),
    "data-not-a-list": (_tensor(data="1 2"), "$.value.__tensor__.data", "expected a flat list of numbers"),
    "data-holds-a-string": (_tensor(data=[1.0, "2"]), "$.value.__tensor__.data[1]", "expected a number"),
    "data-nested": (_tensor(data=[[1.0], [2.0]]), "$.value.__tensor__.data[0]", "expected a number"),
    "value-out-of-range": (_tensor(dtype="int8", data=[1, 1000]), "$.value.__tensor__", "cannot build a int8 tensor"),
    "bad-float-marker": ({"__float__": "one"}, "$.value.__float__", "expected 'nan', 'inf' or '-inf'"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_value_names_the_file_and_the_path_inside_it(tmp_path, name):
    value, where, problem = BROKEN[name]
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"value": value}))
    with pytest.raises(GoldenFileError) as caught:
        golden.read(path)
    message = str(caught.value)
    assert str(path) in message and f"at {where}: " in message and problem in message, message


def test_the_path_inside_goes_through_lists_and_nested_objects(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(json.dumps({"rows": [{"ok": 1}, {"logits": _tensor(shape=[3])}]}))
    with pytest.raises(GoldenFileError, match=r"at \$\.rows\[1\]\.logits\.__tensor__: shape \[3\] holds 3 values"):
        golden.read(path)


def test_check_names_the_file_and_how_to_regenerate_it(tmp_path):
    (tmp_path / "table.json").write_text(json.dumps({"t": _tensor(dtype="float33")}))
    with pytest.raises(GoldenFileError) as caught:
        golden.check("table", {"t": torch.ones(2)}, directory=tmp_path, regenerate="pytest -k table --update-goldens")
    message = str(caught.value)
    assert str(tmp_path / "table.json") in message and "regenerate it with: pytest -k table --update-goldens" in message


def test_a_golden_error_is_a_value_error_not_a_test_failure():
    assert issubclass(GoldenFileError, ValueError) and not issubclass(GoldenFileError, AssertionError)


@pytest.mark.parametrize("content, problem", [
    (b'{"a": 1', "is not valid JSON"),
    (b"\xff\xfe\x00{", "cannot be read"),
], ids=["truncated-json", "not-utf8"])
def test_unreadable_golden_files_name_the_file(tmp_path, content, problem):
    path = tmp_path / "g.json"
    path.write_bytes(content)
    with pytest.raises(GoldenFileError, match=rf"golden file {path} {problem}"):
        golden.read(path)


def test_a_directory_where_the_golden_file_should_be_is_named(tmp_path):
    (tmp_path / "g.json").mkdir()
    with pytest.raises(GoldenFileError, match=rf"golden file {tmp_path / 'g.json'} cannot be read: it is a directory"):
        golden.read(tmp_path / "g.json")


def test_well_formed_goldens_still_round_trip(tmp_path):
    value = {"t": torch.randn(2, 3, dtype=torch.float64), "empty": torch.zeros(0, 4), "i": torch.arange(3),
             "b": torch.tensor([True, False]), "nan": float("nan"), "rows": [1, 2.5, "x", None]}
    path = golden.write(tmp_path / "g.json", value)
    assert golden.diff(golden.from_jsonable(golden.to_jsonable(value)), golden.read(path)) == []


def test_golden_roundtrip_and_report(tmp_path):
    value = {"grid": [40, 60], "t": torch.arange(6, dtype=torch.float64).reshape(2, 3), "name": "x"}
    golden.check("g", value, directory=tmp_path, update=True)
    golden.check("g", value, directory=tmp_path)
    changed = dict(value, t=value["t"] + torch.tensor([[0, 0, 0], [0, 1e-3, 0]], dtype=torch.float64))
    with pytest.raises(golden.GoldenMismatch) as info:
        golden.check("g", changed, directory=tmp_path, regenerate="pytest t.py --update-goldens")
    message = str(info.value)
    assert "$.t: tensor (2, 3) torch.float64: 1 of 6 elements differ" in message
    assert "(1, 1): 4.001 vs 4" in message and "pytest t.py --update-goldens" in message
    golden.check("g", changed, directory=tmp_path, atol=1e-2)
    with pytest.raises(golden.GoldenMismatch, match="does not exist; create it with"):
        golden.check("missing", value, directory=tmp_path)
    with pytest.raises(ValueError, match="plain file stem"):
        golden.check("../x", value, directory=tmp_path)
