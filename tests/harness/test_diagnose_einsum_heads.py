"""An attention written with einsum on ``(B, N, heads, head size)`` queries (``'bnhd,bmhd->bhnm'``:
the heads at the axis where the fused call reads the tokens) whose q, k and v are split into
another number of heads than its twin's names the head count, as one written for the fused call
does: not the scale that follows from the head size, nor a part of a fused qkv taken for another,
nor a reshape. Its query is read in the fused call's order, batch and heads, tokens, head size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.diagnose import _query_axes, diagnose_modules
from helpers import findings_text

DIM, HEADS, TOKENS = 16, 4, 5


class _Fused(nn.Module):
    """A fused qkv projection into ``HEADS`` heads, ``F.scaled_dot_product_attention``, an output projection."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class _TokensFirst(nn.Module):
    """The same written with einsum on ``(B, N, heads, head size)`` views of the fused qkv (unbound
    along the parts' axis, as DINOv2 ports write it); ``scale``: the scores' scale, else the
    one of its own head size."""

    def __init__(self, heads: int, scale: float | None = None) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self.heads, self.scale = heads, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).unbind(2)
        scale = (c // self.heads) ** -0.5 if self.scale is None else self.scale
        a = (torch.einsum("bnhd,bmhd->bhnm", q, k) * scale).softmax(-1)
        return self.proj(torch.einsum("bhnm,bmhd->bnhd", a, v).reshape(b, n, c))


def _diagnose(candidate: nn.Module) -> list[dict]:
    torch.manual_seed(0)
    reference = _Fused()
    candidate.load_state_dict(reference.state_dict())
    x = torch.randn(2, TOKENS, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return diagnose_modules(candidate.double().eval(), reference.double().eval(), (x,), {})


def _says_heads(findings: list[dict], expected: str) -> None:
    text = findings[0]["text"] if findings else ""
    assert expected in text, f"expected the head count ({expected}) first, got:\n{findings_text(findings)}"


def test_einsum_heads_at_the_tokens_axis_split_into_fewer_heads_name_the_head_count():
    _says_heads(_diagnose(_TokensFirst(2, scale=(DIM // HEADS) ** -0.5)),
                "attention split into 2 heads of 8 in the candidate, 4 heads of 4 in the reference: another head count")


def test_einsum_heads_whose_scale_follows_their_size_name_the_head_count_not_the_scale():
    findings = _diagnose(_TokensFirst(2))
    _says_heads(findings, "2 heads of 8 in the candidate, 4 heads of 4 in the reference: another head count "
                          "(its scale 1/sqrt(head size) follows)")
    assert not any(f["argument"] == "scale" for f in findings), \
        f"a scale of 1/sqrt(head size) is blamed besides the head count:\n{findings_text(findings)}"


def test_einsum_heads_split_as_the_reference_splits_them_agree():
    assert _diagnose(_TokensFirst(HEADS)) == [], "an einsum attention of the reference's head count is blamed"


@pytest.mark.parametrize("equation, axes", [
    ("bnhd,bmhd->bhnm", (0, 2, 1, 3)),  # tokens first: read as (B, H, N, D)
    ("bhnd,bhmd->bhnm", None),  # already as the fused call reads it
    ("nbd,mbd->bnm", (1, 0, 2)),  # heads folded into the batch, tokens first
    ("...nd,...md->...nm", None),  # an ellipsis says no order
])
def test_an_einsum_query_is_read_in_the_fused_calls_axis_order(equation, axes):
    assert _query_axes(equation) == axes, f"{equation}: query axes {_query_axes(equation)}, expected {axes}"
