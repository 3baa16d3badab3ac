"""A hand-written layer norm (mean, variance, eps add, square root, then its scale and shift) in a
block whose other ops the reference also has: the norm's run of ops begins where it computes the
reference's layer norm, not after an op of its that shares a name with one the reference runs
before its norm. A residual add the candidate drops before such a norm is the finding, not the
norm's eps add taken for it."""

import torch
from torch import nn

from harness.diagnose import diagnose_modules
from port_toys import randomized, tokens
from helpers import findings_text


class HandNorm(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(var + 1e-6) * self.weight + self.bias


class Block(nn.Module):
    """``x + fc2(norm2(x + fc1(norm1(x))))``, its norms ``nn.LayerNorm`` or written out."""

    def __init__(self, hand: bool = False, residual: bool = True) -> None:
        super().__init__()
        norm = HandNorm if hand else (lambda: nn.LayerNorm(16, eps=1e-6))
        self.norm1, self.fc1, self.norm2, self.fc2 = norm(), nn.Linear(16, 16), norm(), nn.Linear(16, 16)
        self.keeps = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.fc1(self.norm1(x))
        x = x + a if self.keeps else a
        return x + self.fc2(self.norm2(x))


def _pair(residual: bool) -> tuple[nn.Module, nn.Module]:
    reference = randomized(Block(), seed=1)
    candidate = Block(hand=True, residual=residual).double().eval()
    with torch.no_grad():
        for mine, theirs in zip(candidate.parameters(), reference.parameters(), strict=True):
            mine.copy_(theirs)
    return candidate, reference


def _ops(candidate: nn.Module, reference: nn.Module) -> list[dict]:
    return [f for f in diagnose_modules(candidate, reference, (tokens(),), {}) if f["kind"] != "attribute"]


def test_dropped_residual_before_a_hand_written_norm_is_named_missing() -> None:
    findings = _ops(*_pair(residual=False))
    assert findings and findings[0]["kind"] == "missing_op" and findings[0]["op"] == "add" \
        and "after fc1" in findings[0]["text"], \
        f"expected the residual add after fc1 named missing first, got:\n{findings_text(findings)}"


def test_dropped_residual_is_not_read_as_the_norms_eps() -> None:
    findings = _ops(*_pair(residual=False))
    assert not any(f["module"] == "norm2" for f in findings), \
        f"expected no finding on norm2 (its eps add is part of the norm), got:\n{findings_text(findings)}"


def test_block_with_hand_written_norms_and_its_residuals_has_no_finding() -> None:
    findings = _ops(*_pair(residual=True))
    assert findings == [], f"expected no finding for a right port, got:\n{findings_text(findings)}"
