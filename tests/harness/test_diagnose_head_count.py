"""An attention whose q, k and v are split into another number of heads than the reference's: the
diagnosis names the head count (``2 heads of 8`` against ``4 heads of 4``), in whatever style the
attention is written (a fused qkv reshaped, chunked projections, separate projections, einsum,
heads folded into the batch for ``bmm``, counted by the batch of the module's tokens,
``nn.MultiheadAttention``), and not the scale
``1/sqrt(head size)`` that follows from it, nor a correct chunk or reshape on the way."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.diagnose import diagnose_modules
from helpers import compare_port, findings_text

DIM, HEADS, TOKENS = 16, 4, 5


class Attention(nn.Module):
    """A fused qkv projection split into ``heads``, attention written in ``style``, an output projection."""

    def __init__(self, style: str = "fused", heads: int = HEADS, scale: float | None = None) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self.style, self.heads, self.scale = style, heads, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h, d = self.heads, c // self.heads
        scale = d ** -0.5 if self.scale is None else self.scale
        if self.style == "chunk":
            q, k, v = (t.reshape(b, n, h, d).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        else:
            q, k, v = self.qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        if self.style == "fused":
            o = F.scaled_dot_product_attention(q, k, v, scale=scale)
        elif self.style == "einsum":
            scores = torch.einsum("bhnd,bhmd->bhnm", q, k) * scale
            o = torch.einsum("bhnm,bhmd->bhnd", scores.softmax(-1), v)
        elif self.style == "bmm":
            q, k, v = (t.reshape(b * h, n, d) for t in (q, k, v))
            o = torch.bmm((torch.bmm(q, k.transpose(1, 2)) * scale).softmax(-1), v).reshape(b, h, n, d)
        else:
            o = ((q @ k.transpose(-2, -1)) * scale).softmax(-1) @ v
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


class Separate(nn.Module):
    """q, k and v projections of their own, attention written out."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.proj = (nn.Linear(DIM, DIM) for _ in range(4))
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (p(x).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        o = (q @ k.transpose(-2, -1) / (c // self.heads) ** 0.5).softmax(-1) @ v
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


class Multihead(nn.Module):
    """``nn.MultiheadAttention``; ``masked``: with an additive mask and its weights returned, which
    it computes as ``baddbmm(mask, q * scale, k^T)`` on heads folded into the batch."""

    def __init__(self, heads: int, masked: bool = False) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(DIM, heads, batch_first=True)
        self._masked = masked  # how the toy calls it, no setting to compare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._masked:
            return self.attn(x, x, x, need_weights=False)[0]
        mask = torch.zeros(TOKENS, TOKENS, dtype=x.dtype).fill_diagonal_(-1.0)
        return self.attn(x, x, x, need_weights=True, attn_mask=mask)[0]


def _x() -> torch.Tensor:
    return torch.randn(2, TOKENS, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _diagnose(cand: nn.Module, ref: nn.Module) -> list[dict]:
    return diagnose_modules(cand.double().eval(), ref.double().eval(), (_x(),), {})


def _fused_pair(style: str, **bug) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ref, cand = Attention(), Attention(style, **bug)
    cand.load_state_dict(ref.state_dict())
    return cand, ref


def _says_heads(findings: list[dict], cand: str, ref: str) -> None:
    text = findings[0]["text"] if findings else ""
    assert f"{cand} in the candidate, {ref} in the reference" in text and "head count" in text, \
        f"expected the head count ({cand} against {ref}) first, got:\n{findings_text(findings)}"


@pytest.mark.parametrize("style", ["fused", "written", "einsum"])
def test_a_fused_qkv_split_into_fewer_heads_names_the_head_count(style):
    _says_heads(_diagnose(*_fused_pair(style, heads=2)), "2 heads of 8", "4 heads of 4")


def test_heads_folded_into_the_batch_for_bmm_are_counted_against_the_references_heads():
    _says_heads(_diagnose(*_fused_pair("bmm", heads=8)), "8 heads of 2", "4 heads of 4")


def test_heads_folded_into_the_batch_on_both_sides_are_counted_by_the_batch_of_the_tokens():
    torch.manual_seed(0)
    ref, cand = Attention("bmm"), Attention("bmm", heads=2)
    cand.load_state_dict(ref.state_dict())
    _says_heads(_diagnose(cand, ref), "2 heads of 8", "4 heads of 4")


def test_the_scale_that_follows_from_the_head_size_is_no_finding_of_its_own():
    findings = _diagnose(*_fused_pair("fused", heads=2))
    assert not any(f["argument"] == "scale" for f in findings), \
        f"a scale of 1/sqrt(head size) is blamed besides the head count:\n{findings_text(findings)}"


def test_a_scale_that_does_not_follow_from_the_head_size_is_named_after_the_head_count():
    findings = _diagnose(*_fused_pair("fused", heads=2, scale=0.1))
    assert [f["argument"] for f in findings[:2]] == ["heads", "scale"], \
        f"expected the head count, then the scale 0.1:\n{findings_text(findings)}"


def test_chunked_projections_with_another_head_count_name_the_head_count_not_the_chunk():
    # the scale kept as the reference's: only the split differs
    _says_heads(_diagnose(*_fused_pair("chunk", heads=2, scale=0.5)), "2 heads of 8", "4 heads of 4")


def test_separate_projections_with_another_head_count_name_the_head_count():
    torch.manual_seed(0)
    ref, cand = Attention("written"), Separate(heads=2)
    with torch.no_grad():
        for i, p in enumerate((cand.q, cand.k, cand.v)):
            p.weight.copy_(ref.qkv.weight[i * DIM:(i + 1) * DIM])
            p.bias.copy_(ref.qkv.bias[i * DIM:(i + 1) * DIM])
        cand.proj.load_state_dict(ref.proj.state_dict())
    _says_heads(_diagnose(cand, ref), "2 heads of 8", "4 heads of 4")


def test_multihead_attention_with_another_head_count_names_the_head_count():
    torch.manual_seed(0)
    ref, cand = Multihead(HEADS), Multihead(2)
    cand.load_state_dict(ref.state_dict())
    _says_heads(_diagnose(cand, ref), "2 heads of 8", "4 heads of 4")


def test_multihead_attention_through_baddbmm_counts_the_heads_it_folds_into_the_batch():
    torch.manual_seed(0)
    ref, cand = Multihead(HEADS, masked=True), Multihead(2, masked=True)
    cand.load_state_dict(ref.state_dict())
    _says_heads(_diagnose(cand, ref), "2 heads of 8", "4 heads of 4")


class Block(nn.Module):
    """A pre-norm attention block around ``attn``: the port a comparison reads end to end."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(DIM), attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


def test_a_port_with_separate_projections_and_another_head_count_reads_as_the_head_count_in_the_report():
    torch.manual_seed(0)
    ref, cand = Block(Attention()).double().eval(), Block(Separate(HEADS)).double().eval()
    report = compare_port(cand, ref, _x(), change=lambda model: setattr(model.attn, "heads", 2))
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert report.culprit == "attn" and "2 heads of 8 in the candidate, 4 heads of 4 in the reference" in why, \
        f"expected the culprit attn and the head count as the why, got culprit {report.culprit!r}, why {why!r}"
