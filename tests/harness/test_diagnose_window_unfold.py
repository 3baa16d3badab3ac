"""Windows cut with ``Tensor.unfold`` (a view: windows along a dim) where the reference reshapes
and permutes: another spelling of one layout, no finding. A cyclic shift (``torch.roll``) one side
applies and the other does not is the difference among the layout ops before the first diverging
op, ahead of the ops that only spell the windows otherwise."""

import torch
from torch import nn

from harness.diagnose import diagnose_modules
from port_toys import randomized
from helpers import findings_text

WS, SHIFT, H, W, C = 2, 1, 4, 6, 8


class Windows(nn.Module):
    """A linear on each ``WS x WS`` window of a ``(B, H, W, C)`` map shifted by ``SHIFT`` (``shift``),
    the windows cut with ``Tensor.unfold`` (``unfold``) or with reshape and permute."""

    def __init__(self, unfold: bool = False, shift: bool = True) -> None:
        super().__init__()
        self.fc, self.unfold, self.shift = nn.Linear(C * WS * WS, C), unfold, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.shift:
            x = torch.roll(x, (-SHIFT, -SHIFT), (1, 2))
        if self.unfold:  # (B, H/WS, W/WS, C, WS, WS) -> (B, H/WS, W/WS, WS, WS, C)
            win = x.unfold(1, WS, WS).unfold(2, WS, WS).permute(0, 1, 2, 4, 5, 3)
        else:
            win = x.reshape(b, H // WS, WS, W // WS, WS, C).permute(0, 1, 3, 2, 4, 5)
        return self.fc(win.reshape(b, -1, WS * WS * C))


def _findings(unfold: bool, shift: bool) -> list[dict]:
    reference = randomized(Windows(), seed=6)
    candidate = Windows(unfold, shift).double().eval()
    candidate.load_state_dict(reference.state_dict())
    x = torch.randn(2, H, W, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return [f for f in diagnose_modules(candidate, reference, (x,), {}) if f["kind"] != "attribute"]


def test_windows_cut_with_tensor_unfold_have_no_finding() -> None:
    findings = _findings(unfold=True, shift=True)
    assert findings == [], f"expected no finding for windows cut with unfold, got:\n{findings_text(findings)}"


def test_missing_roll_is_named_where_windows_are_cut_with_unfold() -> None:
    findings = _findings(unfold=True, shift=False)
    assert findings and findings[0]["kind"] == "missing_op" and findings[0]["op"] == "roll", \
        f"expected the roll named missing first, got:\n{findings_text(findings)}"


def test_unfold_cutting_windows_is_not_named_extra() -> None:
    findings = _findings(unfold=True, shift=False)
    assert not any(f["op"] == "unfold" for f in findings), \
        f"expected no finding on the unfold that cuts the windows, got:\n{findings_text(findings)}"
