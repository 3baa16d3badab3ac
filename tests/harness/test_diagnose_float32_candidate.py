"""An attention whose only difference from its twin is the precision of its softmax (computed in
float32 inside a float64 model, cast back: transformers' eager attention) is diagnosed as just that,
not as "every operation agrees, the returned value does not"; an attention returning its weights
too is compared on the output its twin returns."""

import torch
from torch import nn

from harness.diagnose import diagnose_modules
from helpers import findings_text

DIM, HEADS, TOKENS = 16, 4, 6


class Attention(nn.Module):
    """q, k, v projections and an output one; ``float32``: the softmax computed in float32 and cast
    back; ``weights``: the softmax's result returned with the output."""

    def __init__(self, float32: bool = False, weights: bool = False) -> None:
        super().__init__()
        self.q, self.k, self.v, self.proj = (nn.Linear(DIM, DIM) for _ in range(4))
        self._float32, self._weights = float32, weights  # how the toy is written, no setting to compare

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        q, k, v = (getattr(self, name)(x).reshape(b, n, HEADS, c // HEADS).transpose(1, 2) for name in "qkv")
        scores = q @ k.transpose(-1, -2) * (c // HEADS) ** -0.5
        weights = scores.softmax(-1, dtype=torch.float32).to(x.dtype) if self._float32 else scores.softmax(-1)
        out = self.proj((weights @ v).transpose(1, 2).reshape(b, n, c))
        return (out, weights) if self._weights else out


def _diagnosed(**port: bool) -> list[dict]:
    torch.manual_seed(0)
    ref, cand = Attention().double().eval(), Attention(float32=True, **port).double().eval()
    cand.load_state_dict(ref.state_dict())
    x = torch.randn(1, TOKENS, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return diagnose_modules(cand, ref, (x,), {})


def test_attention_differing_only_by_its_float32_softmax_is_said_so():
    findings = _diagnosed()
    assert findings and "softmax computed in float32 in the candidate, float64 in the reference" in findings[0]["text"], \
        f"expected the softmax's precision named, got:\n{findings_text(findings)}"


def test_attention_returning_its_weights_too_is_compared_on_its_output():
    findings = _diagnosed(weights=True)
    assert findings and "softmax computed in float32" in findings[0]["text"], \
        f"expected the softmax's precision named, got:\n{findings_text(findings)}"
