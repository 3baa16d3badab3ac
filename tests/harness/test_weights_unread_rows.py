"""A table whose forward reads one range of its rows (transformers' VitDet keeps a class row in its
position table and adds ``table[:, 1:]`` to the patches alone) against a reference table holding
those rows only: the candidate's table is the reference's with constant rows inserted where its
forward never reads, marked ``unread``, so that reading the map backward drops them whatever they
hold. The other way round, the reference's table loses its unread rows (``remove``, marked
``unread``), and reads back with zeros there."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness
from harness.keymap import check_step
from harness.weightmap import load_weight_map
from helpers import transferred
from port_toys import randomized

C, P = 8, 4  # channels, patch size: a 16 px image gives N = 16 patches
N = 16


class _Patches(nn.Module):
    """Patches embedded, a position table added, one linear layer: the table is ``table``."""

    def __init__(self, rows: int, spare: slice | None = None, flat: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, C, P, stride=P)
        self.table = nn.Parameter(torch.zeros(rows, C) if flat else torch.zeros(1, rows, C))
        self.spare = spare  # the rows read: None for all
        self.head = nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        table = self.table if self.spare is None else self.table[self.spare] if self.table.ndim == 2 \
            else self.table[:, self.spare]
        return self.head(tokens + table)


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _reference(flat: bool = False) -> nn.Module:
    return randomized(_Patches(N, flat=flat), 3)


def _table_entry(weights):
    return {e.candidate: e for e in weights.entries}["table"]


@pytest.fixture(scope="module")
def port():
    return transferred(_Patches(N + 1, slice(1, None)).double().eval(), _reference(), _images())


def test_a_table_read_past_its_class_row_takes_the_reference_table_after_an_unread_row(port):
    _, _, weights = port
    steps = _table_entry(weights).steps
    assert weights.verified and steps == ({"op": "insert", "dim": 1, "start": 0, "size": 1, "value": 0.0,
                                           "unread": True},), \
        f"expected table <- table with one unread row inserted at 0 along dim 1, verified; got:\n{weights}"


def test_a_port_adding_only_the_patch_rows_of_its_table_passes(port):
    candidate, reference, weights = port
    report = harness.compare(candidate, reference, _images(), weights=weights)
    assert report.passed, report.format()


def test_reading_the_map_backward_drops_the_unread_row_whatever_it_holds(port):
    candidate, reference, weights = port
    state = dict(candidate.state_dict())
    state["table"] = state["table"].clone()
    state["table"][:, 0] = 5.0  # a trained class row the forward never reads
    back = weights.to_reference(state)
    assert torch.equal(back["table"], reference.table.detach()), \
        f"expected the reference table back, max difference {(back['table'] - reference.table).abs().max():.3e}"


def test_a_saved_map_keeps_the_unread_mark(port, tmp_path):
    _, _, weights = port
    loaded = load_weight_map(weights.save(tmp_path / "map.json"))
    assert _table_entry(loaded).steps == _table_entry(weights).steps, f"the map read back:\n{loaded}"


def test_rows_a_flat_table_leaves_at_its_end_are_unread_rows_there():
    candidate = _Patches(N + 2, slice(0, N), flat=True).double().eval()
    candidate, reference, weights = transferred(candidate, _reference(flat=True), _images())
    steps = _table_entry(weights).steps
    assert weights.verified and steps == ({"op": "insert", "dim": 0, "start": N, "size": 2, "value": 0.0,
                                           "unread": True},), \
        f"expected table <- table with two unread rows inserted at {N}, verified; got:\n{weights}"


def test_a_table_of_the_read_rows_alone_takes_the_references_table_without_its_unread_row():
    reference = randomized(_Patches(N + 1, slice(1, None)), 3)
    _, _, weights = transferred(_Patches(N).double().eval(), reference, _images())
    steps = _table_entry(weights).steps
    assert weights.verified and steps == ({"op": "remove", "dim": 1, "start": 0, "stop": 1, "unread": True},), \
        f"expected table <- table with its unread row 0 removed along dim 1, verified; got:\n{weights}"


def test_the_removed_unread_row_reads_back_as_zeros():
    reference = randomized(_Patches(N + 1, slice(1, None)), 3)
    candidate, reference, weights = transferred(_Patches(N).double().eval(), reference, _images())
    back = weights.to_reference(dict(candidate.state_dict()))["table"]
    expected = torch.cat([torch.zeros(1, 1, C, dtype=torch.float64), reference.table.detach()[:, 1:]], 1)
    assert torch.equal(back, expected), f"expected the reference's read rows after a zero row, got shape " \
                                        f"{tuple(back.shape)}, max difference {(back - expected).abs().max():.3e}"


def test_an_insert_whose_unread_mark_is_no_boolean_is_rejected():
    step = {"op": "insert", "dim": 1, "start": 0, "size": 1, "value": 0.0, "unread": "yes"}
    with pytest.raises(ValueError, match="'unread' must be true or false"):
        check_step(step)
