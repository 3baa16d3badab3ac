"""The order of operands of a join on both sides: tensors first used together by one join
(``torch.stack(list(kernels))``) have no order of use among them but their operand positions, so
the k-th operand of the candidate's join takes the k-th of the reference's. Where both models
join their tensors so, the reference's join reads where the candidate's pass left the sources,
and agrees with it."""

from __future__ import annotations

from harness.weightmap import Entry
from harness.weights import _in_operand_order, _Tensor

SHAPE = (4, 2, 3, 3)


def joined(keys: list[str]) -> list[_Tensor]:
    """Tensors first used together by one ``stack``, in operand order."""
    return [_Tensor(key, SHAPE, "parameter", "stack", 1, None) for key in keys]


def taking(pairs: list[tuple[str, str]]) -> list[Entry]:
    return [Entry(c, (r,), (), SHAPE, (SHAPE,), "parameter") for c, r in pairs]


def test_joins_on_both_sides_give_the_kth_operand_the_kth_operand_of_the_other():
    cand, ref = joined(["conv.kernel_a", "conv.kernel_b"]), joined(["block.w0", "block.w1"])
    entries = _in_operand_order(taking([("conv.kernel_a", "block.w1"), ("conv.kernel_b", "block.w0")]), cand, ref)
    assert {e.candidate: e.reference for e in entries} == {
        "conv.kernel_a": ("block.w0",), "conv.kernel_b": ("block.w1",)}, entries
