"""The op recorder: one canonical name per operation, named arguments, the models left untouched."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import harness
from harness.diagnose import canonical_name, diagnose_modules, record_ops


class Fn(nn.Module):
    """A module whose forward is the given function of its input and its ``gain`` parameter."""

    def __init__(self, fn, dim: int = 4) -> None:
        super().__init__()
        self.fn = fn
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, dim, dtype=torch.float64))
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(dim, dim, dtype=torch.float64, generator=g))
        self.bias = nn.Parameter(torch.randn(dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))

    def forward(self, x):
        return self.fn(self, x)


def _stream(fn, x=None):
    x = torch.randn(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) if x is None else x
    return record_ops(Fn(fn), (x,), {})[1]


@pytest.mark.parametrize("spelling", [
    lambda m, x: x * m.gain, lambda m, x: m.gain * x, lambda m, x: x.mul(m.gain), lambda m, x: torch.mul(x, m.gain),
])
def test_every_spelling_of_a_product_records_one_mul_by_the_parameter(spelling):
    (op,) = _stream(spelling)
    assert op.name == "mul" and list(op.params.values()) == ["gain"], op


def test_linear_and_addmm_are_one_operation():
    linear = _stream(lambda m, x: F.linear(x, m.weight, m.bias), torch.randn(6, 4, dtype=torch.float64))
    addmm = _stream(lambda m, x: torch.addmm(m.bias, x, m.weight.t()), torch.randn(6, 4, dtype=torch.float64))
    assert [o.name for o in linear] == [o.name for o in addmm] == ["linear"]
    assert linear[0].params["bias"] == addmm[0].params["bias"] == "bias"


def test_softmax_method_and_function_bind_the_same_non_negative_dim():
    method = _stream(lambda m, x: x.softmax(-1))
    function = _stream(lambda m, x: F.softmax(x, dim=2))
    assert method[0].name == function[0].name == "softmax"
    assert method[0].args["dim"] == function[0].args["dim"] == 2


def test_fused_and_written_out_attention_are_one_operation_with_its_effective_scale():
    q = torch.randn(1, 2, 5, 16, dtype=torch.float64)

    def manual(m, x):
        return ((x / 4.0) @ x.transpose(-2, -1)).softmax(dim=-1) @ x

    (written,) = _stream(manual, q)
    (kernel,) = _stream(lambda m, x: F.scaled_dot_product_attention(x, x, x), q)
    assert written.name == kernel.name == "scaled_dot_product_attention"
    assert written.args["scale"] == pytest.approx(kernel.args["scale"]) == 0.25
    assert written.args["dim"] == kernel.args["dim"] == 3
    assert torch.allclose(written.outputs[0], kernel.outputs[0])


def test_layout_ops_and_eval_dropout_stay_out_of_the_stream():
    names = [o.name for o in _stream(lambda m, x: F.dropout(F.gelu(x.permute(0, 2, 1).reshape(2, -1)), 0.5, False))]
    assert names == ["gelu"]


def test_dunder_and_in_place_spellings_share_a_name():
    assert canonical_name(torch.Tensor.__radd__) == canonical_name(torch.Tensor.add_) == "add"
    assert canonical_name(torch.Tensor.__matmul__) == canonical_name(torch.bmm) == "matmul"
    assert canonical_name(torch.Tensor.view) == "reshape"


def test_diagnosis_leaves_a_training_batchnorm_bitwise_unchanged():
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GELU()).double().train()

    cand, ref = net(), net()
    cand[2].approximate = "tanh"
    before = {k: v.clone() for k, v in cand.state_dict().items()}
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    findings = diagnose_modules(cand, ref, (x,), {})
    assert findings[0]["op"] == "gelu" and findings[0]["argument"] == "approximate", findings
    after = cand.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the diagnosis changed the candidate's state"
    assert cand.training and cand[1].num_batches_tracked.item() == 0


def test_diagnosis_of_a_patched_forward_restores_the_running_statistics():
    torch.manual_seed(0)
    cand = nn.Sequential(nn.BatchNorm1d(4)).double().train()
    ref = nn.Sequential(nn.BatchNorm1d(4)).double().train()
    ref.load_state_dict(cand.state_dict())
    cand.forward = lambda x: cand[0](x) * 2  # a patched forward cannot be copied: the original runs
    before = {k: v.clone() for k, v in cand.state_dict().items()}
    findings = diagnose_modules(cand, ref, (torch.randn(3, 4, dtype=torch.float64),), {})
    assert findings and findings[0]["kind"] == "extra_op" and findings[0]["op"] == "mul", findings
    assert all(torch.equal(before[k], v) for k, v in cand.state_dict().items())


def test_a_passing_comparison_has_no_diagnosis():
    from harness_toys import TOY

    assert harness.compare_pair(TOY, dtype=torch.float64).diagnosis == []


def test_a_summary_comparison_is_explained_by_settings_alone():
    from harness_toys import TOY

    candidate, _ = TOY.build(dtype=torch.float64)
    candidate.blocks[1].norm.eps = 1e-3
    report = harness.compare_pair(TOY, candidate=candidate, dtype=torch.float64, mode="summary")
    assert not report.passed and [f["kind"] for f in report.diagnosis] == ["attribute"], report.diagnosis
