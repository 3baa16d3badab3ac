"""Linears written as einsums: ``einsum('bnc,oc->bno', x, W) + b`` computes what ``nn.Linear`` does,
whichever way ``W`` is stored. The diagnosis reads it as a linear and names the real error, never a
bias that is there."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from harness.diagnose import diagnose_modules
from port_toys import randomized, tokens
from helpers import findings_text


def _ops(findings: list[dict]) -> list[dict]:
    return [f for f in findings if f["kind"] != "attribute"]


class MlpAsEinsum(nn.Module):
    """An MLP whose linears are einsums plus a bias, weights stored ``(out, in)`` or ``(in, out)``."""

    def __init__(self, equation: str, approximate: str = "none") -> None:
        super().__init__()
        self.equation, self.approximate = equation, approximate
        stored_in_out = equation.split(",")[1].startswith("c")
        self.w1 = nn.Parameter(torch.zeros((16, 32) if stored_in_out else (32, 16)))
        self.w2 = nn.Parameter(torch.zeros((32, 16) if stored_in_out else (16, 32)))
        self.b1, self.b2 = nn.Parameter(torch.zeros(32)), nn.Parameter(torch.zeros(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(torch.einsum(self.equation, x, self.w1) + self.b1, approximate=self.approximate)
        return torch.einsum(self.equation, h, self.w2) + self.b2


def _pair(equation: str, approximate: str) -> tuple[nn.Module, nn.Module]:
    reference = randomized(nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)), 2)
    candidate = randomized(MlpAsEinsum(equation, approximate), 1)
    with torch.no_grad():
        for w, b, linear in ((candidate.w1, candidate.b1, reference[0]), (candidate.w2, candidate.b2, reference[2])):
            w.copy_(linear.weight if w.shape == linear.weight.shape else linear.weight.t())
            b.copy_(linear.bias)
    return candidate, reference


@pytest.mark.parametrize("equation", ["bnc,oc->bno", "bnc,co->bno", "...c,oc->...o"])
def test_an_einsum_by_a_weight_plus_a_bias_is_a_linear_and_only_the_real_error_is_named(equation):
    candidate, reference = _pair(equation, "tanh")
    findings = _ops(diagnose_modules(candidate, reference, (tokens(),), {}, name="mlp"))
    assert [(f["op"], f["argument"]) for f in findings] == [("gelu", "approximate")], findings_text(findings)


def test_a_changed_einsum_weight_is_named_without_a_bias_said_missing():
    candidate, reference = _pair("bnc,oc->bno", "none")
    with torch.no_grad():
        candidate.w1[3, 4] += 0.1
    findings = _ops(diagnose_modules(candidate, reference, (tokens(),), {}, name="mlp"))
    assert len(findings) == 1 and findings[0]["text"].startswith(
        "mlp: linear operand w1 holds other values than the reference's 0.weight"), findings_text(findings)
