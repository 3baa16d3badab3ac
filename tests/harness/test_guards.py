"""Verdicts that must not be wrong: the tolerance dtype of parameter-free models, models left as they
were, randomness named, and NaN/Inf on one side never printed as a perfect score."""

import json

import pytest
import torch
from torch import nn

import harness
from harness.guards import ModelState, comparison_dtype
from harness.pairs import as_call
from harness_toys import TOY, WithScripted

F64 = torch.float64


class Scale(nn.Module):
    """Parameter-free: multiplies by a constant."""

    def __init__(self, factor: float = 1.0) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class BufferScale(nn.Module):
    """Buffers only: a float32 scale buffer, so no parameter gives the dtype."""

    def __init__(self, factor: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(factor, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype)


class Lookup(nn.Module):
    """Integer inputs, a float64 table buffer: only the outputs can give the dtype."""

    def __init__(self, factor: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("table", torch.linspace(1, 2, 10, dtype=F64) * factor)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]


class BatchNormNet(nn.Module):
    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4, eps=eps)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.bn(self.fc(x)))


def _twins(make, **bug) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    reference = make().double()
    candidate = make(**bug).double()
    candidate.load_state_dict(reference.state_dict())
    return candidate, reference


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}


def _assert_bitwise_equal(before: dict, model: nn.Module, side: str) -> None:
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"the comparison changed the {side}'s {changed}"


# -- the tolerance dtype -------------------------------------------------------------------------
@pytest.mark.parametrize("model", [Scale, BufferScale], ids=["parameter-free", "buffers-only"])
def test_model_without_parameters_is_judged_by_its_float64_inputs_and_outputs(model):
    x = torch.randn(3, 5, dtype=F64)
    report = harness.compare(model(1 + 1e-6), model(1.0), x)
    assert report.dtype == "float64", f"judged at {report.dtype} tolerance although inputs and outputs are float64"
    assert not report.passed, f"a 1e-6 relative error passed at float64 tolerance:\n{report.verdict()}"


def test_integer_inputs_leave_the_dtype_to_the_outputs():
    ids = torch.tensor([[1, 2, 3], [4, 5, 9]])
    report = harness.compare(Lookup(1 + 1e-6), Lookup(1.0), ids)
    assert report.dtype == "float64" and not report.passed, report.verdict()


def test_float32_parameter_free_comparison_keeps_the_float32_policy():
    report = harness.compare(Scale(1.0), Scale(1.0), torch.randn(3, 5))
    assert report.dtype == "float32" and report.tolerance == harness.DEFAULT_TOLERANCES["float32"], report.verdict()


def test_the_most_precise_output_dtype_sets_the_tolerance():
    call = as_call(torch.ones(2))
    final = [("a", torch.ones(2, dtype=torch.float16), torch.ones(2, dtype=torch.float16)),
             ("b", torch.ones(2, dtype=F64), torch.ones(2, dtype=F64))]
    assert comparison_dtype(Scale(), Scale(), call, final) == F64


def test_parameter_free_candidate_against_a_float64_reference_is_not_a_dtype_error():
    reference = nn.Linear(4, 4, bias=False).double()
    with torch.no_grad():
        reference.weight.copy_(torch.eye(4, dtype=F64))
    report = harness.compare(Scale(1.0), reference, torch.randn(2, 4, dtype=F64), rename=[("^$", "")])
    assert report.dtype == "float64" and report.passed, report.verdict()


# -- models left as they were --------------------------------------------------------------------
def test_train_mode_comparison_leaves_batchnorm_statistics_bitwise_unchanged():
    candidate, reference = _twins(BatchNormNet, eps=1e-3)  # an eps bug: fails, culprit search re-runs bn
    before = {"candidate": _state(candidate), "reference": _state(reference)}
    report = harness.compare(candidate, reference, torch.randn(8, 4, dtype=F64))
    assert not report.passed and report.culprit == "bn", report.format()
    assert any(r.reran for r in report.rows), "the culprit search did not re-run a module: the test proves less"
    _assert_bitwise_equal(before["candidate"], candidate, "candidate")
    _assert_bitwise_equal(before["reference"], reference, "reference")
    assert int(candidate.bn.num_batches_tracked) == 0 and int(reference.bn.num_batches_tracked) == 0


def test_the_same_objects_pass_once_the_bug_is_fixed():
    candidate, reference = _twins(BatchNormNet, eps=1e-3)
    x = torch.randn(8, 4, dtype=F64)
    assert not harness.compare(candidate, reference, x).passed
    candidate.bn.eps = reference.bn.eps  # the fix; the running statistics must not have drifted meanwhile
    candidate.eval(), reference.eval()
    report = harness.compare(candidate, reference, x)
    assert report.passed, f"the first comparison left the models changed:\n{report.format()}"


def test_training_flags_and_replaced_buffers_are_restored():
    class Replacing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("count", torch.zeros(()))

        def forward(self, x):
            self.count = self.count + 1  # a new tensor object, not an in-place change
            self.eval()
            return x * 2

    candidate, reference = Replacing().double(), Replacing().double()
    original = candidate.count
    harness.compare(candidate, reference, torch.randn(2, dtype=F64))
    assert candidate.count is original and float(candidate.count) == 0.0
    assert candidate.training and reference.training


def test_state_is_restored_when_the_comparison_raises():
    class Broken(BatchNormNet):
        def forward(self, x):
            super().forward(x)
            raise RuntimeError("reference failed")

    candidate, _ = _twins(BatchNormNet)
    reference = Broken().double()
    reference.load_state_dict(candidate.state_dict())
    before = _state(candidate)
    with pytest.raises(RuntimeError, match="reference failed"):
        harness.compare(candidate, reference, torch.randn(8, 4, dtype=F64))
    _assert_bitwise_equal(before, candidate, "candidate")


def test_model_state_restores_nan_payloads_and_negative_zero_bitwise():
    model = BufferScale()
    model.scale = torch.tensor(-0.0)
    state = ModelState(model)
    model.scale.fill_(0.0)  # equal to -0.0 by ==, different bits
    state.restore()
    assert torch.signbit(model.scale), "-0.0 was not restored bitwise"


def test_a_parameter_changed_in_place_by_forward_is_named():
    class Drifting(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            self.fc.weight.mul_(1.5)  # weights are not copied: this cannot be undone, only reported
            return self.fc(x)

    candidate, reference = _twins(Drifting)
    reference.forward = lambda x: reference.fc(x)
    report = harness.compare(candidate, reference, torch.randn(3, 2, dtype=F64))
    (note,) = [n for n in report.notes if "parameters in place" in n]
    assert note.startswith("the candidate wrote into 1 parameters in place during the comparison (fc.weight)"), note


def test_train_mode_is_said_in_the_report_and_eval_mode_is_not():
    candidate, reference = _twins(BatchNormNet)
    x = torch.randn(8, 4, dtype=F64)
    report = harness.compare(candidate, reference, x)
    assert any("train mode" in note and "candidate" in note for note in report.notes), report.notes
    assert "train mode" in report.format()
    candidate.eval(), reference.eval()
    assert not any("train mode" in note for note in harness.compare(candidate, reference, x).notes)


# -- non-determinism -----------------------------------------------------------------------------
class Noisy(nn.Module):
    def __init__(self, noise: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.noise = noise

    def forward(self, x):
        y = self.fc(x)
        return y + 1e-3 * torch.randn_like(y) if self.noise else y


def _nondeterminism(report) -> list[str]:
    return [n for n in report.notes if "not deterministic" in n]


@pytest.mark.parametrize("side", ["candidate", "reference"])
def test_random_numbers_in_forward_are_named_on_the_random_side(side):
    torch.manual_seed(0)
    noisy, plain = Noisy(True).double().eval(), Noisy(False).double().eval()
    plain.load_state_dict(noisy.state_dict())
    pair = (noisy, plain) if side == "candidate" else (plain, noisy)
    report = harness.compare(*pair, torch.randn(2, 4, dtype=F64))
    notes = _nondeterminism(report)
    assert not report.passed and len(notes) == 1, report.notes
    assert notes[0].startswith(f"the {side} is not deterministic: two runs on the same inputs differ by max_abs=")


def test_dropout_in_train_mode_is_detected():
    class Dropped(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.drop = nn.Linear(16, 16), nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(self.fc(x))

    candidate, reference = _twins(Dropped)
    report = harness.compare(candidate, reference, torch.randn(4, 16, dtype=F64))
    sides = {note.split()[1] for note in _nondeterminism(report)}
    assert sides == {"candidate", "reference"}, report.notes


def test_a_deterministic_failure_is_not_blamed_on_randomness():
    candidate, reference = TOY.build(dtype=F64)
    with torch.no_grad():
        candidate.head.bias.add_(1e-3)
    report = harness.compare(candidate, reference, TOY.inputs(dtype=F64))
    assert not report.passed and not _nondeterminism(report), report.notes


def test_a_passing_comparison_runs_each_model_once():
    calls = {"candidate": 0, "reference": 0}
    candidate, reference = TOY.build(dtype=F64)
    for side, model in (("candidate", candidate), ("reference", reference)):
        model.register_forward_pre_hook(lambda *_, side=side: calls.__setitem__(side, calls[side] + 1))
    assert harness.compare(candidate, reference, TOY.inputs(dtype=F64)).passed
    assert calls == {"candidate": 1, "reference": 1}, f"a passing comparison re-ran a model: {calls}"


# -- non-finite outputs --------------------------------------------------------------------------
class Poison(nn.Module):
    def __init__(self, value: float | None) -> None:
        super().__init__()
        self.value = value

    def forward(self, x):
        return x if self.value is None else x.index_fill(-1, torch.tensor([0]), self.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("side", ["candidate", "reference"])
def test_nonfinite_against_finite_outputs_never_print_a_perfect_score(value, side):
    pair = (Poison(value), Poison(None)) if side == "candidate" else (Poison(None), Poison(value))
    report = harness.compare(*pair, torch.randn(3, 4, dtype=F64))
    line = report.verdict().splitlines()[0]
    assert not report.passed and report.output.nonfinite_mismatch == 3, line
    assert "max_abs=0.000e+00" not in line and "cosine=1.000000000000" not in line, line
    assert "nonfinite_mismatch=3" in line, line
    assert not any("agreeing NaNs" in n for n in report.notes), report.notes
    assert any("on one side only" in n for n in report.notes), report.notes


def test_nonfinite_mismatch_is_counted_in_the_report_json():
    report = harness.compare(Poison(float("nan")), Poison(None), torch.randn(3, 4, dtype=F64))
    output = json.loads(json.dumps(report.to_dict(), allow_nan=False))["output"]
    assert output["nonfinite_mismatch"] == 3 and output["max_abs"] == "inf" and output["cosine"] == "nan", output


def test_agreeing_nans_are_still_said_to_prove_nothing():
    report = harness.compare(Poison(float("nan")), Poison(float("nan")), torch.randn(3, 4, dtype=F64))
    assert not report.passed and any("agreeing NaNs prove nothing" in n for n in report.notes), report.notes
    assert not any("one side only" in n for n in report.notes), report.notes


def test_summary_rows_with_a_nonfinite_mismatch_are_not_scored_perfect():
    report = harness.compare(Poison(float("nan")), Poison(None), torch.randn(3, 4, dtype=F64), mode="summary")
    (row,) = report.rows
    assert row.metrics.nonfinite_mismatch and row.metrics.max_abs == float("inf"), row.metrics


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_a_model_with_a_scripted_submodule_is_compared_and_left_as_it_was():
    torch.manual_seed(0)
    candidate, reference = WithScripted().eval(), WithScripted().eval()
    candidate.load_state_dict(reference.state_dict())
    before = {k: v.clone() for k, v in candidate.state_dict().items()}
    report = harness.compare(candidate, reference, torch.randn(3, 4), backward=True)
    assert report.passed, report.format()
    assert all(torch.equal(before[k], v) for k, v in candidate.state_dict().items())


def test_a_module_in_train_mode_whose_code_never_reads_the_flag_is_not_named_in_the_train_mode_note():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Identity(), nn.GELU()).double().eval()
    model[1].train(), model[2].train()  # freshly built stand-ins, train mode by default
    from harness.guards import train_mode_notes

    assert train_mode_notes(model, model) == []
