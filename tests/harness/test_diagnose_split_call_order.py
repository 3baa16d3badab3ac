"""A reference calling its split projections in another order than their roles (``key``, ``value``,
then ``query``, as Hugging Face's DPT and YOLOS do) against a port's fused ``qkv``: the split
projections are joined in the order the weight map gives their rows in the fused weight, not in the
order they are called, so a correct fused qkv is never said to be passed rolled, and the
diagnosis names the port's real error."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from helpers import compare_port, findings_text

DIM, HEADS = 16, 2


def _heads(t: torch.Tensor) -> torch.Tensor:
    return t.unflatten(-1, (HEADS, -1)).transpose(1, 2)


class _KeyFirst(nn.Module):
    """Separate query, key and value projections, called key, value, query, then an output
    projection and an activation."""

    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(DIM, DIM) for _ in range(3))
        self.out = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, v, q = (_heads(p(x)) for p in (self.key, self.value, self.query))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return torch.tanh(self.out(o))


class _FusedPort(nn.Module):
    """The same with one fused ``qkv`` projection, query rows first; ``act``: its activation."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self.act = torch.tanh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_heads(t) for t in self.qkv(x).chunk(3, -1))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.act(self.out(o))


def _x() -> torch.Tensor:
    return torch.randn(2, 5, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _reference() -> nn.Module:
    torch.manual_seed(0)
    return _KeyFirst().double().eval()


def test_a_correct_fused_qkv_against_projections_called_key_first_passes():
    report = compare_port(_FusedPort().double().eval(), _reference(), _x())
    assert report.passed, f"a correct port fails:\n{findings_text(report.diagnosis or [])}"


def test_an_error_after_a_fused_qkv_against_projections_called_key_first_is_named_not_the_qkv():
    report = compare_port(_FusedPort().double().eval(), _reference(), _x(), lambda m: setattr(m, "act", torch.sigmoid))
    why = findings_text(report.diagnosis or [])
    assert not report.passed and "qkv" not in why, f"the correct fused qkv is blamed:\n{why}"
    assert "sigmoid" in why.splitlines()[0], f"expected the sigmoid in the tanh's place first, got:\n{why}"
