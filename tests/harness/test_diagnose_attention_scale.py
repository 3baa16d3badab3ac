"""An attention written with a hand-written softmax (``exp(s - max) / sum``) or with its scores
scaled inside ``baddbmm`` (``alpha=scale``) reads as the one fused attention it computes: right, it
is no finding; with another scale, the diagnosis names the two scales, as for a fused call; a mask
``baddbmm`` adds to the scores (a causal mask computed in the forward) is compared with the
reference's ``attn_mask``."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.diagnose import diagnose_modules
from helpers import findings_text

DIM, HEADS, TOKENS = 16, 4, 5
HEAD = DIM // HEADS


class Attention(nn.Module):
    """A fused qkv projection, scores scaled by ``scale`` in ``style``, a causal mask added where ``masked``."""

    def __init__(self, style: str = "fused", scale: float = HEAD ** -0.5, masked: bool = False) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self._masked = masked
        self._style, self.scale = style, scale  # the style: how the toy is written, no setting

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, HEAD).permute(2, 0, 3, 1, 4).unbind(0)
        mask = torch.full((n, n), -1e4, dtype=x.dtype).triu(1) if self._masked else None
        if self._style == "fused":
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        elif self._style == "softmax":
            scores = (q @ k.transpose(-2, -1)) * self.scale
            e = torch.exp(scores - scores.amax(-1, keepdim=True))
            o = (e / e.sum(-1, keepdim=True)) @ v
        else:  # baddbmm: heads folded into the batch, the scale as alpha, a mask as the added input
            q, k, v = (t.reshape(b * HEADS, n, HEAD) for t in (q, k, v))
            added = mask.expand(b * HEADS, n, n) if mask is not None else torch.zeros(b * HEADS, n, n, dtype=q.dtype)
            scores = torch.baddbmm(added, q, k.transpose(1, 2), beta=0 if mask is None else 1, alpha=self.scale)
            o = torch.bmm(scores.softmax(-1), v).reshape(b, HEADS, n, HEAD)
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


def _diagnosed(cand: nn.Module, ref: nn.Module) -> list[dict]:
    torch.manual_seed(0)
    ref.double().eval()
    cand.double().eval().load_state_dict(ref.state_dict())
    x = torch.randn(2, TOKENS, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return diagnose_modules(cand, ref, (x,), {})


@pytest.mark.parametrize("style", ["softmax", "baddbmm"])
def test_attention_written_out_with_the_references_scale_is_no_finding(style):
    findings = _diagnosed(Attention(style), Attention())
    assert findings == [], f"a right port is blamed:\n{findings_text(findings)}"


@pytest.mark.parametrize("style", ["softmax", "baddbmm"])
def test_attention_written_out_with_another_scale_names_both_scales(style):
    findings = _diagnosed(Attention(style, scale=1 / HEAD), Attention())
    assert findings and (findings[0]["argument"], findings[0]["candidate"], findings[0]["reference"]) == \
        ("scale", 1 / HEAD, HEAD ** -0.5), \
        f"expected scale 0.25 in the candidate against 0.5 in the reference first, got:\n{findings_text(findings)}"


def test_a_mask_added_by_baddbmm_is_compared_with_the_references_mask():
    findings = _diagnosed(Attention("baddbmm", masked=True), Attention(masked=True))
    assert findings == [], f"a mask added inside baddbmm is blamed:\n{findings_text(findings)}"


def test_a_mask_added_by_baddbmm_leaves_its_scale_compared():
    findings = _diagnosed(Attention("baddbmm", scale=1 / HEAD, masked=True), Attention(masked=True))
    assert findings and (findings[0]["argument"], findings[0]["candidate"]) == ("scale", 1 / HEAD), \
        f"expected scale 0.25 in the candidate first, got:\n{findings_text(findings)}"
