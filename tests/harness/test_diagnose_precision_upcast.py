"""A reference computing its softmax in float32 inside a float64 model (``softmax(s, dtype=float32)``
then a cast back, as HF's eager attention does) differs from a port's plain softmax only by
rounding: a value difference behind it (key and value exchanged) is the finding said first, and
the upcast alone is said only where nothing else explains the divergence."""

import torch
from torch import nn

from harness.diagnose import diagnose_modules
from helpers import findings_text

DIM, HEADS, TOKENS = 16, 4, 6


class UpcastAttention(nn.Module):
    """Separate q, k, v projections, the scores' softmax taken in float32 and cast back (``upcast``),
    ``swap`` naming two of q, k, v passed in each other's place."""

    def __init__(self, upcast: bool = False, swap: str = "") -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(DIM, DIM) for _ in range(3))
        self.proj = nn.Linear(DIM, DIM)
        self._upcast, self._swap = upcast, swap  # how the toy is written, no setting to compare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        parts = {name: getattr(self, name)(x).reshape(b, n, HEADS, c // HEADS).transpose(1, 2) for name in "qkv"}
        if self._swap:
            first, second = self._swap
            parts[first], parts[second] = parts[second], parts[first]
        q, k, v = parts["q"], parts["k"], parts["v"]
        scores = q @ k.transpose(-1, -2) * (c // HEADS) ** -0.5
        if self._upcast:
            weights = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
        else:
            weights = scores.softmax(-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, c))


def _diagnosed(swap: str) -> list[dict]:
    torch.manual_seed(0)
    ref, cand = UpcastAttention(upcast=True).double().eval(), UpcastAttention(swap=swap).double().eval()
    cand.load_state_dict(ref.state_dict())
    x = torch.randn(1, TOKENS, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return diagnose_modules(cand, ref, (x,), {})


def test_key_and_value_exchanged_behind_a_float32_softmax_name_the_exchange_first():
    findings = _diagnosed("kv")
    assert findings and "operand key holds the reference's value" in findings[0]["text"], \
        f"expected the key holding the reference's value first, got:\n{findings_text(findings)}"


def test_the_reference_softmax_upcast_is_said_after_the_value_difference():
    findings = _diagnosed("kv")
    precision = [i for i, f in enumerate(findings) if f["argument"] == "dtype" or f["op"] == "cast"]
    assert all(i > 0 for i in precision), \
        f"a precision-only difference is said before the value difference:\n{findings_text(findings)}"


class UpcastBlock(nn.Module):
    """The attention above, then a residual MLP whose GELU is ``approximate``."""

    def __init__(self, upcast: bool = False, approximate: str = "none") -> None:
        super().__init__()
        self.attn, self.fc1, self.fc2 = UpcastAttention(upcast), nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.fc2(nn.functional.gelu(self.fc1(x), approximate=self.approximate))


def test_a_tanh_gelu_after_a_float32_softmax_is_the_finding():
    torch.manual_seed(0)
    ref, cand = UpcastBlock(upcast=True).double().eval(), UpcastBlock(approximate="tanh").double().eval()
    cand.load_state_dict(ref.state_dict())
    x = torch.randn(1, TOKENS, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    findings = diagnose_modules(cand, ref, (x,), {})
    assert findings and findings[0]["argument"] == "approximate", \
        f"expected the GELU's approximate first, got:\n{findings_text(findings)}"
