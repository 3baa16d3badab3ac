"""harness.metrics: the error measures, and the tolerance policy per dtype and per module."""

import math

import pytest
import torch

from harness import Tolerance, measure
from harness.metrics import tolerance_for


def test_metrics_values():
    ref = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)
    cand = ref + torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64)
    m = measure(cand, ref)
    assert m.max_abs == 0.5 and m.ref_absmax == 4.0
    assert m.max_rel == pytest.approx(0.25)
    assert m.rel_l2 == pytest.approx(0.5 / math.sqrt(21))
    assert m.cosine == pytest.approx(float(cand @ ref / (cand.norm() * ref.norm())))
    assert measure(ref, ref).max_abs == 0 and measure(ref, ref).cosine == pytest.approx(1.0)


def test_metrics_shape_and_nonfinite_mismatch_fail():
    assert measure(torch.zeros(2), torch.zeros(3)).shape_mismatch
    tol = Tolerance(atol=1.0, rtol=1.0)
    assert not measure(torch.zeros(2), torch.zeros(3)).passes(tol)
    nan = torch.tensor([float("nan"), 1.0])
    assert measure(nan, nan.clone()).passes(Tolerance(0, 0))
    assert not measure(torch.tensor([0.0, 1.0]), nan).passes(tol)


def test_tolerance_policy_dtype_pair_and_module_overrides():
    assert tolerance_for(torch.float64) == Tolerance(atol=1e-10, rtol=1e-9)
    loose = Tolerance(atol=1e-3, rtol=1e-3)
    assert tolerance_for("float32", overrides={"float32": loose}) == loose
    rule = (r"\.attn$", "float64", Tolerance(atol=1e-8, rtol=0))
    assert tolerance_for(torch.float64, module="blocks.0.attn", module_overrides=[rule]).atol == 1e-8
    assert tolerance_for(torch.float64, module="blocks.0.mlp", module_overrides=[rule]).atol == 1e-10
    with pytest.raises(ValueError, match="no tolerance policy for dtype 'int64'"):
        tolerance_for(torch.int64)
    with pytest.raises(ValueError, match="atol must be a number >= 0"):
        Tolerance(atol=-1, rtol=0)


@pytest.mark.parametrize("values", [
    torch.tensor([[1.5, -3.0], [0.25, 2.0]]),
    torch.tensor([[1.5, -3.0], [0.25, 2.0]], dtype=torch.bfloat16).t(),
    torch.tensor([True, False]),
    torch.tensor([3, -7]),
    torch.zeros(4),
], ids=["float32", "bfloat16-transposed", "bool", "int64", "zeros"])
def test_bitwise_equal_tensors_measure_as_the_general_formula_says(values):
    shortcut = measure(values, values.clone())
    general = measure(values, values.clone() + torch.zeros((), dtype=torch.float64))  # float64: no shortcut
    assert shortcut.max_abs == shortcut.max_rel == shortcut.rel_l2 == 0.0 and shortcut.cosine == 1.0
    assert shortcut.ref_absmax == general.ref_absmax and shortcut.nonfinite_mismatch == 0
    assert general.max_abs == 0.0 and general.cosine == pytest.approx(1.0)


def test_equal_tensors_with_nan_and_inf_are_measured_in_full():
    values = torch.tensor([float("nan"), float("inf"), -2.0])
    m = measure(values, values)
    assert m.passes(Tolerance(0, 0)) and m.ref_absmax == 2.0 and m.nonfinite_mismatch == 0
