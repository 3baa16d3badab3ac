"""compare(): verdicts that a misbehaving model must not fool, and errors for malformed options."""

import copy

import pytest
import torch
from torch import nn

import harness
from harness import Tolerance
from harness_toys import TOY, Net


class ActThenLinear(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(x))


def _pair(a: nn.Module, b: nn.Module) -> tuple[nn.Module, nn.Module]:
    b.load_state_dict(a.state_dict())
    return a.double(), b.double()


def test_candidate_writing_into_its_input_cannot_fake_a_pass():
    candidate, reference = _pair(ActThenLinear(nn.ReLU(inplace=True)), ActThenLinear(nn.Identity()))
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    report = harness.compare(candidate, reference, x)
    assert not report.passed and report.output.max_abs > 1e-3, report.format()
    assert report.input_mutations == {"candidate": ["args.0"], "reference": []}
    assert "the candidate modified its inputs in place: args.0" in report.format()
    assert torch.equal(x, before) and (x < 0).any()  # the caller's tensor is untouched


def test_agreeing_nans_in_outputs_do_not_pass_unless_allowed():
    torch.manual_seed(0)
    a, b = nn.Linear(2, 2).double(), nn.Linear(2, 2).double()  # different weights
    x = torch.tensor([[float("nan"), 1.0]], dtype=torch.float64)
    report = harness.compare(a, b, x)
    assert not report.passed and "non-finite values (NaN/Inf) in final outputs" in report.format()
    assert harness.compare(a, b, x, allow_nonfinite=True).passed  # NaN at the same places, opted in


def test_unmatched_in_place_activation_is_not_a_pass_through():
    class Clipped(Net):
        def __init__(self):
            super().__init__(extra_identity=True)
            self.pre = nn.ReLU(inplace=True)

    candidate, reference = TOY.build(dtype=torch.float64)
    clipped = Clipped().double().eval()
    clipped.load_state_dict(candidate.state_dict())
    report = harness.compare(clipped, reference, TOY.inputs(dtype=torch.float64))
    assert report.unmatched_candidate == ["pre#0"] and report.passthrough_candidate == []
    assert not report.passed and report.culprit == "pre"  # no twin, yet named rather than the root


def test_tolerance_and_rename_options_are_validated():
    a, b = _pair(ActThenLinear(nn.Identity()), ActThenLinear(nn.Identity()))
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"tolerances key must be one of 'bfloat16', .*got 'fp32'"):
        harness.compare(a, b, x, tolerances={"fp32": Tolerance(atol=1, rtol=1)})
    with pytest.raises(TypeError, match=r"tolerances\['float32'\] must be a harness.Tolerance"):
        harness.compare(a, b, x, tolerances={"float32": 1e-3})
    with pytest.raises(TypeError, match=r"a module tolerance rule must be a tuple \(regex, dtype name or None, Tolerance\)"):
        harness.compare(a, b, x, module_tolerances=[("fc", Tolerance(atol=1, rtol=1))])
    with pytest.raises(ValueError, match=r"the dtype of module tolerance rule .* must be one of .*None, got 'fp64'"):
        harness.compare(a, b, x, module_tolerances=[("fc", "fp64", Tolerance(atol=1, rtol=1))])
    with pytest.raises(ValueError, match="is not a valid regex"):
        harness.compare(a, b, x, module_tolerances=[("(", None, Tolerance(atol=1, rtol=1))])
    with pytest.raises(ValueError, match=r"rename rule \('\(', 'x'\) is not a valid regex"):
        harness.compare(a, b, x, rename=[("(", "x")])
    with pytest.raises(ValueError, match="is not a valid regex"):
        harness.Pair(name="bad", candidate=Net, reference=Net, convert=dict, make_inputs=lambda g: None,
                     rename=(("[", "x"),))


def test_models_of_different_dtypes_are_refused_with_both_named():
    a, b = ActThenLinear(nn.Identity()), ActThenLinear(nn.Identity()).double()
    with pytest.raises(TypeError, match="candidate parameters are torch.float32 but reference parameters are torch.float64"):
        harness.compare(a, b, torch.randn(2, 4))


def test_wrong_structural_guess_is_tentative_when_everything_else_agrees():
    class Ab(nn.Module):
        def __init__(self, names: tuple[str, str]) -> None:
            super().__init__()
            self.first, self.second = names
            self.add_module(names[0], nn.Tanh())
            self.add_module(names[1], nn.Sigmoid())

        def forward(self, x):
            return getattr(self, self.first)(x) + getattr(self, self.second)(x)

    # same math, names that tell nothing: structure pairs u<->p (Tanh) and v<->q (Sigmoid)...
    report = harness.compare(Ab(("u", "v")), Ab(("p", "q")), torch.randn(3))
    assert report.passed and [r.status for r in report.rows if r.match.how == "structure"] == ["ok", "ok"]

    class Ba(Ab):  # ...but here the candidate calls its Sigmoid first: pairing by order guesses wrong
        def forward(self, x):
            return getattr(self, self.second)(x) + getattr(self, self.first)(x)

    report = harness.compare(Ba(("u", "v")), Ab(("p", "q")), torch.randn(3))
    assert report.passed and {r.status for r in report.rows if r.match.how == "structure"} == {"tentative"}
    assert "structurally paired rows differ (tentative pairings by shape, not counted)" in report.format()


def test_an_output_function_may_return_the_tensor_itself():
    torch.manual_seed(0)
    reference = torch.nn.Linear(4, 3).double()
    candidate = copy.deepcopy(reference)
    x = torch.randn(2, 4, dtype=torch.float64)
    report = harness.compare(candidate, reference, x, reference_outputs=lambda out: out)
    assert report.passed, report.format()
    with pytest.raises(TypeError, match=r"reference_outputs must return the output's tensors .*got str"):
        harness.compare(candidate, reference, x, reference_outputs=lambda out: "logits")


def test_an_empty_batch_is_refused_rather_than_passed():
    reference = torch.nn.Linear(4, 3).double()
    candidate = torch.nn.Linear(4, 3).double()  # other weights: only an empty batch would agree
    with pytest.raises(ValueError, match=r"the final outputs hold no elements \(output \(0, 3\)\)"):
        harness.compare(candidate, reference, torch.randn(0, 4, dtype=torch.float64))


class Doubler(nn.Module):
    """A linear layer whose output is doubled when called with ``final=True``."""

    def __init__(self, factor: float = 2.0) -> None:
        super().__init__()
        self.fc, self.factor = nn.Linear(8, 8), factor

    def forward(self, x, final=False):
        y = self.fc(x)
        return y * self.factor if final else y


class CalledTwice(nn.Module):
    def __init__(self, factor: float = 2.0) -> None:
        super().__init__()
        self.shared, self.head = Doubler(factor), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.shared(self.shared(x).relu(), final=True))


def test_the_culprits_call_is_named_when_its_module_runs_more_than_once():
    torch.manual_seed(0)
    reference, candidate = CalledTwice().double(), CalledTwice(factor=2.5).double()
    candidate.load_state_dict(reference.state_dict())
    report = harness.compare(candidate, reference, torch.randn(1, 5, 8, dtype=torch.float64))
    assert (report.culprit, report.culprit_call, report.to_dict()["culprit_call"]) == ("shared", 1, 1), report.format()
    assert "culprit (introduces the error itself): shared (its call #1)" in report.format()


class _TokensOut(nn.Module):
    """A projection returning tokens ``(B, H*W, C)``."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x.flatten(2).transpose(1, 2))


class _MapOut(nn.Module):
    """The same projection returning a channels-last map ``(B, H, W, C)``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 2, 3, 1))


def _layout_pair() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    candidate, reference = _TokensOut().double().eval(), _MapOut().double().eval()
    candidate.dense.load_state_dict(reference.proj.state_dict())
    return candidate, reference, torch.randn(2, 4, 8, 6, dtype=torch.float64)


def test_final_outputs_holding_the_same_values_in_another_layout_pass_with_a_note():
    candidate, reference, x = _layout_pair()
    report = harness.compare(candidate, reference, x)
    assert report.passed and report.output.max_abs == 0, report.format()
    assert "output: the candidate gives shape (2, 48, 8), the reference (2, 8, 6, 8); compared through" in report.notes[0]


def test_final_outputs_in_another_layout_that_differ_fail_with_a_finite_error():
    candidate, reference, x = _layout_pair()
    with torch.no_grad():
        candidate.dense.weight[0, 0] += 1.0
    report = harness.compare(candidate, reference, x)
    assert not report.passed and 0 < report.output.max_abs < float("inf"), report.format()


class _PooledDict(nn.Module):
    """A backbone returning a transformers-style mapping: the last map first, the pooled ``(B, C, 1, 1)`` second."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.pool = nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.conv(x))
        return {"last_hidden_state": h, "pooler_output": self.pool(h)}


class _Pooled(nn.Module):
    """The same backbone returning its pooled features ``(B, C)`` alone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.pool = nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x))).flatten(1)


def test_the_root_row_measures_the_outputs_candidate_outputs_selects():
    torch.manual_seed(0)
    candidate, reference = _PooledDict().double().eval(), _Pooled().double().eval()
    candidate.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    report = harness.compare(candidate, reference, x, candidate_outputs=lambda o: o["pooler_output"])
    root = next(r for r in report.rows if r.candidate == "<root>")
    assert report.passed and root.passed, report.format()


def test_outputs_of_other_shapes_say_so_in_the_verdict_and_name_both_shapes():
    torch.manual_seed(0)
    candidate, reference = nn.Linear(4, 10).double().eval(), nn.Linear(4, 7).double().eval()
    report = harness.compare(candidate, reference, torch.randn(2, 4, dtype=torch.float64))
    assert report.verdict().splitlines()[0].startswith("comparison [float64, cpu]: FAIL -- output shapes differ"), \
        report.format()
    assert any("the candidate gives shape (2, 10), the reference (2, 7)" in n for n in report.notes), report.notes


def test_one_output_picked_by_key_is_compared_with_a_reference_returning_one_tensor():
    torch.manual_seed(0)
    reference = nn.Linear(4, 3).double().eval()
    candidate = copy.deepcopy(reference)
    report = harness.compare(candidate, reference, torch.randn(2, 4, dtype=torch.float64),
                             candidate_outputs=lambda out: {"logits": out})
    assert report.passed and list(report.outputs) == ["logits"], report.format()
