"""Summary mode keeps statistics, not values: a module whose inputs agree by their statistics makes
the error it returns. A padding mask of the positions kept against the reference's mask of the
positions masked is one input in two conventions (their statistics are each other's inverse), and
the projections an attention calls without a twin of their own cannot be vouched for by values,
so the attention, not one of them, is blamed for its scale."""

from __future__ import annotations

import torch
from torch import nn

import harness


class Reference(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        x = x + self.attn(h, h, h, key_padding_mask=~keep, need_weights=False)[0]
        return self.head(x.mean(1))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.heads, self.scale = heads, (dim // heads) ** -0.5

    def forward(self, x: torch.Tensor, mask: torch.Tensor, keeps: bool = True) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (p(x).view(b, n, self.heads, c // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        logits = (q * self.scale) @ k.transpose(-1, -2)  # (B, heads, N, N)
        masked = ~mask if keeps else mask
        logits = logits.masked_fill(masked[:, None, None, :], float("-inf"))
        return self.o((logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class Port(nn.Module):
    """``keeps``: its attention is handed the positions kept (the reference's mask inverted), else
    the positions masked, as the reference's is."""

    def __init__(self, dim: int = 16, heads: int = 2, keeps: bool = True) -> None:
        super().__init__()
        self.keeps = keeps
        self.ln = nn.LayerNorm(dim)
        self.attention = Attention(dim, heads)
        self.cls = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln(x), keep if self.keeps else ~keep, self.keeps)
        return self.cls(x.mean(1))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[0, -2:] = False
    return x, keep


def _summary_report(scale: float | None = None, keeps: bool = True) -> harness.Report:
    reference, port = Reference().double().eval(), Port(keeps=keeps).double().eval()
    weights = harness.map_weights(port, reference, _inputs())
    weights.transfer(reference, port)
    if scale is not None:
        port.attention.scale = scale
    return harness.compare(port, reference, _inputs(), weights=weights, mode="summary")


def test_correct_port_with_the_inverse_mask_passes_in_summary_mode():
    report = _summary_report()
    assert report.passed, report.format()


def test_summary_mode_blames_the_attention_given_the_inverse_mask():
    report = _summary_report(scale=8 ** -1.0)
    assert not report.passed and report.culprit == "attention", report.format()


def test_summary_mode_blames_no_projection_for_its_attention_scale():
    report = _summary_report(scale=8 ** -1.0, keeps=False)
    assert not any(name.startswith("attention.") for name in report.introduced), report.format()
