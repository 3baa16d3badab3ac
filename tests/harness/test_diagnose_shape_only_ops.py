"""Ops that compute nothing from their operands' values are no ops the streams align: a
``zeros_like(v_bias)`` (a fused bias with a zero key part) is a constant operand whatever it reads,
and a resize to the size its table already has (``interpolate`` written for sizes that need one)
is the table itself. The difference behind them is the finding."""

import torch
import torch.nn.functional as F
from torch import nn

from harness.diagnose import diagnose_modules
from helpers import findings_text

DIM, TOKENS = 8, 6


class ShiftedQKV(nn.Module):
    """Tokens shifted by one (unless ``shift`` is False), then a fused q|k|v projection whose key
    part has no bias: a zero block built by ``zeros_like`` or by ``zeros``."""

    def __init__(self, shift: bool = True, like: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3 * DIM, DIM))
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(DIM)), nn.Parameter(torch.randn(DIM))
        self._shift, self._like = shift, like  # how the toy is written, no setting to compare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._shift:
            x = x.roll(1, 1)
        zero = torch.zeros_like(self.v_bias) if self._like else torch.zeros(DIM, dtype=x.dtype)
        return F.linear(x, self.weight, torch.cat([self.q_bias, zero, self.v_bias]))


class ResizedTable(nn.Module):
    """Scores of the tokens against a height or a width table, resized to the length they have."""

    def __init__(self, table: str = "table_h", resize: bool = True) -> None:
        super().__init__()
        self.table_h, self.table_w = nn.Parameter(torch.randn(5, DIM)), nn.Parameter(torch.randn(5, DIM))
        self._table, self._resize = table, resize  # how the toy is written, no setting to compare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table = getattr(self, self._table)
        if self._resize:
            table = F.interpolate(table.t()[None], size=table.shape[0], mode="linear")[0].t()
        return x @ table.t()


def _diagnosed(ref: nn.Module, cand: nn.Module) -> list[dict]:
    torch.manual_seed(0)
    ref, cand = ref.double().eval(), cand.double().eval()
    cand.load_state_dict(ref.state_dict())
    x = torch.randn(1, TOKENS, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return diagnose_modules(cand, ref, (x,), {})


def test_a_zero_bias_block_built_by_zeros_like_leaves_the_missing_shift_named():
    torch.manual_seed(0)
    findings = _diagnosed(ShiftedQKV(), ShiftedQKV(shift=False, like=True))
    assert findings and findings[0]["kind"] == "missing_op" and findings[0]["op"] == "roll", \
        f"expected the missing roll first, got:\n{findings_text(findings)}"


def test_a_zero_bias_block_built_by_zeros_like_against_zeros_is_no_finding():
    torch.manual_seed(0)
    findings = _diagnosed(ShiftedQKV(), ShiftedQKV(like=True))
    assert findings == [], f"a right port is blamed:\n{findings_text(findings)}"


def test_a_table_resized_to_its_own_size_is_the_table_whose_exchange_is_named():
    torch.manual_seed(0)
    findings = _diagnosed(ResizedTable(), ResizedTable("table_w", resize=False))
    assert findings and "holds the reference's table_w" in findings[0]["text"], \
        f"expected the width table in the height table's place first, got:\n{findings_text(findings)}"
