"""A fused projection split into parts taken in another order than the reference's (key and value
of a separable, linear-cost attention swapped: ``q, v, k = split(...)``): the diagnosis says which
part of the reference's split the operation receives and which the reference passes there, whatever
operation reads it (a product with a softmax, not a fused attention with named operands)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.diagnose import diagnose_modules
from helpers import findings_text

DIM, TOKENS = 8, 6


class Separable(nn.Module):
    """One score per token from a fused projection ``(1, DIM, DIM)``; ``order``: the names given to
    its parts, in the order the projection holds them; ``how``: ``split`` sizes, equal ``chunk``s, or
    chunks ``transposed`` to ``(batch, channels, tokens)`` before they are used."""

    def __init__(self, order: str = "qkv", how: str = "split") -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM, 1 + 2 * DIM if how == "split" else 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)
        self._order, self._how = order, how  # how the toy is written, no setting to compare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.qkv(x)
        parts = y.split([1, DIM, DIM], dim=-1) if self._how == "split" else y.chunk(3, dim=-1)
        if self._how == "transposed":
            parts = [p.transpose(1, 2) for p in parts]
        tokens = 2 if self._how == "transposed" else 1
        named = dict(zip(self._order, parts))
        context = (named["k"] * F.softmax(named["q"], dim=tokens)).sum(tokens, keepdim=True)
        out = F.relu(named["v"]) * context
        return self.proj(out.transpose(1, 2) if self._how == "transposed" else out)


def _diagnosed(how: str, order: str) -> list[dict]:
    torch.manual_seed(0)
    ref, cand = Separable(how=how).double().eval(), Separable(order, how).double().eval()
    cand.load_state_dict(ref.state_dict())
    x = torch.randn(2, TOKENS, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return diagnose_modules(cand, ref, (x,), {})


@pytest.mark.parametrize("how", ["split", "chunk", "transposed"])
def test_key_and_value_parts_swapped_name_the_part_received_and_the_part_expected(how):
    findings = _diagnosed(how, "qvk")
    assert findings and "receives part 3 of the 3 the reference's" in findings[0]["text"] \
        and "passes part 2" in findings[0]["text"], \
        f"expected part 3 received where the reference passes part 2, got:\n{findings_text(findings)}"


def test_parts_in_the_references_order_are_no_finding():
    findings = _diagnosed("split", "qkv")
    assert findings == [], f"a right port is blamed:\n{findings_text(findings)}"
