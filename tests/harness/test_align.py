"""harness.align: candidate calls paired with reference calls by name, rename rule or structure."""

import pytest
import torch

from harness.align import align
from harness.trace import Record


def rec(name, i, shape, call=0):
    return Record(name=name, call=call, start=i, end=i, outputs={"": torch.zeros(shape)})


def test_alignment_by_name_rename_and_structure_lists_the_rest():
    cand = [rec("stem", 0, (1, 4)), rec("blocks.0.qkv", 1, (1, 12)), rec("blocks.0.extra", 2, (1, 4)),
            rec("blocks.0.proj", 3, (1, 4)), rec("norm", 4, (1, 4))]
    ref = [rec("stem", 0, (1, 4)), rec("layer.0.q", 1, (1, 4)), rec("layer.0.k", 2, (1, 4)),
           rec("layer.0.v", 3, (1, 4)), rec("layer.0.out", 4, (1, 4)), rec("final_norm", 5, (1, 4))]
    result = align(cand, ref, rename=[(r"^norm$", "final_norm")])
    how = {m.candidate.name: (m.reference.name, m.how) for m in result.matches}
    assert how["stem"] == ("stem", "name") and how["norm"] == ("final_norm", "rename")
    # the fused qkv has no shape twin: it stays unmatched; the calls closing the gap pair up
    assert "blocks.0.qkv" not in how
    assert how["blocks.0.proj"] == ("layer.0.out", "structure")
    assert how["blocks.0.extra"] == ("layer.0.v", "structure")
    assert [r.name for r in result.unmatched_candidate] == ["blocks.0.qkv"]
    assert [r.name for r in result.unmatched_reference] == ["layer.0.q", "layer.0.k"]


def test_structural_pairing_prefers_shared_name_words():
    cand = [rec("a", 0, (1, 4)), rec("blk.o_proj", 1, (1, 4)), rec("blk.mlp", 2, (1, 4)), rec("z", 3, (1, 4))]
    ref = [rec("a", 0, (1, 4)), rec("layer.proj", 1, (1, 4)), rec("layer.norm", 2, (1, 4)),
           rec("layer.fc", 3, (1, 4)), rec("z", 4, (1, 4))]
    how = {m.candidate.name: m.reference.name for m in align(cand, ref).matches}
    assert how["blk.o_proj"] == "layer.proj" and how["blk.mlp"] in {"layer.norm", "layer.fc"}


def test_alignment_keeps_call_indices_apart():
    cand = [rec("lin", 0, (2,), call=0), rec("lin", 1, (2,), call=1)]
    ref = [rec("lin", 0, (2,), call=0), rec("lin", 1, (2,), call=1)]
    result = align(cand, ref)
    assert [(m.candidate.key, m.reference.key) for m in result.matches] == [("lin#0", "lin#0"), ("lin#1", "lin#1")]


def test_alignment_rejects_malformed_rules():
    with pytest.raises(TypeError, match=r"\(regex, replacement\)"):
        align([], [], rename=["^a$"])  # type: ignore[list-item]
