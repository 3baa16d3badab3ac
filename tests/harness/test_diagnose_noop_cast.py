"""The diagnosis re-runs twins at float64; a cast the reference makes to the dtype the models were
compared at (``x.to(torch.float32)`` in a float32 model) cast nothing there, so it is no finding
and does not hide the real difference (a norm's eps)."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import findings_text

D = 8


class _RMSNorm(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(D)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class _UpcastRMSNorm(_RMSNorm):
    """Computes in float32 whatever the model's dtype, as transformers' norms do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)).to(dtype)


class _Net(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.fc, self.norm = nn.Linear(D, D), norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x))


def _diagnosis() -> tuple[str, str, str | None]:
    torch.manual_seed(0)
    reference, candidate = _Net(_UpcastRMSNorm(1e-5)).eval(), _Net(_RMSNorm(1e-1)).eval()
    candidate.load_state_dict(reference.state_dict())
    report = harness.compare(candidate, reference, torch.randn(2, 5, D) * 0.1)
    return (report.diagnosis[0]["text"] if report.diagnosis else ""), findings_text(report.diagnosis), report.culprit


def test_a_cast_to_the_compared_dtype_is_no_finding():
    why, all_, _ = _diagnosis()
    assert "cast missing" not in all_, all_


def test_a_norm_eps_difference_behind_a_no_op_cast_is_named():
    why, all_, culprit = _diagnosis()
    assert culprit == "norm", f"culprit {culprit}, expected norm"
    assert "0.1 in the candidate, 1e-05 in the reference" in why, all_
