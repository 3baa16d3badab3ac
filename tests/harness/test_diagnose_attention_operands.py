"""Query, key and value passed in another order than the reference's: the diagnosis says which
operand holds which (``query holds the reference's key``), also where one side folds the heads into
the batch (``bmm`` on ``(batch * heads, tokens, head size)``, a reshape away from the other side's
``(batch, heads, tokens, head size)``) or scales its scores inside ``baddbmm``."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.diagnose import diagnose_modules
from helpers import findings_text

DIM, HEADS, TOKENS = 16, 4, 5


class Attention(nn.Module):
    """A fused qkv projection; ``swap`` names two of q, k, v passed in each other's place."""

    def __init__(self, style: str = "fused", swap: str = "") -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self._style, self._swap = style, swap  # how the toy is written, no setting to compare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        d = c // HEADS
        parts = dict(zip("qkv", self.qkv(x).reshape(b, n, 3, HEADS, d).permute(2, 0, 3, 1, 4).unbind(0)))
        if self._swap:
            first, second = self._swap
            parts[first], parts[second] = parts[second], parts[first]
        q, k, v = parts["q"], parts["k"], parts["v"]
        if self._style == "fused":
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            q, k, v = (t.reshape(b * HEADS, n, d) for t in (q, k, v))
            if self._style == "bmm":
                scores = torch.bmm(q, k.transpose(1, 2)) * d ** -0.5
            else:  # baddbmm, the scale as its alpha
                scores = torch.baddbmm(torch.zeros(b * HEADS, n, n, dtype=q.dtype), q, k.transpose(1, 2),
                                       beta=0, alpha=d ** -0.5)
            o = torch.bmm(scores.softmax(-1), v).reshape(b, HEADS, n, d)
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


def _diagnosed(style: str, swap: str) -> list[dict]:
    torch.manual_seed(0)
    ref, cand = Attention().double().eval(), Attention(style, swap).double().eval()
    cand.load_state_dict(ref.state_dict())
    x = torch.randn(2, TOKENS, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return diagnose_modules(cand, ref, (x,), {})


@pytest.mark.parametrize("style", ["bmm", "baddbmm"])
def test_query_and_key_swapped_with_heads_folded_into_the_batch_name_the_swap(style):
    findings = _diagnosed(style, "qk")
    assert findings and "operand query holds the reference's key" in findings[0]["text"], \
        f"expected the query holding the reference's key first, got:\n{findings_text(findings)}"


@pytest.mark.parametrize("style", ["bmm", "baddbmm"])
def test_key_and_value_swapped_with_heads_folded_into_the_batch_name_the_swap(style):
    findings = _diagnosed(style, "kv")
    assert findings and "operand key holds the reference's value" in findings[0]["text"], \
        f"expected the key holding the reference's value first, got:\n{findings_text(findings)}"


@pytest.mark.parametrize("style", ["bmm", "baddbmm"])
def test_attention_with_heads_folded_into_the_batch_in_the_right_order_is_no_finding(style):
    findings = _diagnosed(style, "")
    assert findings == [], f"a right port is blamed:\n{findings_text(findings)}"
