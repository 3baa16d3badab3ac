"""A padding mask written otherwise than the reference's: ``nn.MultiheadAttention`` given a
``key_padding_mask`` (True where a key is padding) against a port that fills the scores with
``-inf`` where ``~keep`` (True where a key is kept). The two masks agree as the scores receive them,
so the port's ``~`` is no finding; a mask of the other polarity is said as the positions it masks
and keeps otherwise, not as a difference of values (there is none where both keep a key)."""

import math

import torch
from torch import nn

import harness
from port_toys import randomized

WIDTH, HEADS, TOKENS = 16, 2, 6


class PaddedReference(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(WIDTH), nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return x + self.attn(h, h, h, key_padding_mask=~keep, need_weights=False)[0]


class KeepMaskAttention(nn.Module):
    """Split projections, the attention written out, keys outside ``keep`` filled with ``-inf``."""

    def __init__(self, scale: float = (WIDTH // HEADS) ** -0.5) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(WIDTH, WIDTH) for _ in range(4))
        self.scale = scale

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (p(x).reshape(b, n, HEADS, c // HEADS).transpose(1, 2) for p in (self.q, self.k, self.v))
        scores = (q * self.scale) @ k.transpose(-1, -2)
        scores = scores.masked_fill(~keep[:, None, None, :], -math.inf)
        return self.o((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class KeepMaskPort(nn.Module):
    """``inverted``: the port hands its attention the padding mask where ``keep`` belongs."""

    def __init__(self, scale: float = (WIDTH // HEADS) ** -0.5, inverted: bool = False) -> None:
        super().__init__()
        self.ln, self.attention, self.inverted = nn.LayerNorm(WIDTH), KeepMaskAttention(scale), inverted

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return x + self.attention(self.ln(x), ~keep if self.inverted else keep)


def _report(**port) -> "harness.Report":
    reference = randomized(PaddedReference(), seed=3)
    candidate = KeepMaskPort(**port).double().eval()
    mha = reference.attn
    with torch.no_grad():
        candidate.ln.load_state_dict(reference.norm.state_dict())
        for i, proj in enumerate((candidate.attention.q, candidate.attention.k, candidate.attention.v)):
            proj.weight.copy_(mha.in_proj_weight[i * WIDTH:(i + 1) * WIDTH])
            proj.bias.copy_(mha.in_proj_bias[i * WIDTH:(i + 1) * WIDTH])
        candidate.attention.o.load_state_dict(mha.out_proj.state_dict())
    x = torch.randn(2, TOKENS, WIDTH, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    keep = torch.ones(2, TOKENS, dtype=torch.bool)
    keep[0, -2:] = False
    return harness.compare(candidate, reference, (x, keep))


def _texts(report: "harness.Report") -> str:
    return "\n".join(f["text"] for f in report.diagnosis) or "(no diagnosis)"


def test_keep_mask_filled_with_inf_ported_right_passes() -> None:
    report = _report()
    assert report.passed, f"expected the port filling ~keep with -inf to pass, got:\n{report.format()}"


def test_mask_spelled_otherwise_is_no_finding_beside_the_bug() -> None:
    report = _report(scale=WIDTH ** -0.5)
    ops = [f["op"] for f in report.diagnosis if f["kind"] in ("extra_op", "missing_op")]
    assert report.culprit == "attention" and "scale" in report.diagnosis[0]["text"] and not ops, \
        f"expected the scale named alone, the mask's ~ being no finding, got culprit {report.culprit}:\n" \
        f"{_texts(report)}"


def test_inverted_mask_is_said_by_the_positions_it_masks() -> None:
    report = _report(inverted=True)
    why = report.diagnosis[0]["text"] if report.diagnosis else "(no diagnosis)"
    assert report.culprit == "attention" and report.diagnosis[0]["argument"] == "attn_mask" \
        and "masks 10 position(s) the reference keeps and keeps 2 it masks" in why, \
        f"expected the mask said to mask 10 positions the reference keeps and keep 2 it masks, got culprit " \
        f"{report.culprit}:\n{_texts(report)}"


def test_inverted_mask_is_said_inverted_not_of_other_values() -> None:
    report = _report(inverted=True)
    why = report.diagnosis[0]["text"] if report.diagnosis else "(no diagnosis)"
    assert "polarity looks inverted" in why and "difference 0.000e+00" not in why, \
        f"expected the mask's polarity said inverted, with no difference of 0 in values, got:\n{_texts(report)}"
