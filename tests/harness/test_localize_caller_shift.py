"""A shifted-window attention whose original shifts its input, cuts it into windows and builds
their mask inside, ported as an attention handed windows (and the mask) by its block's code. A
block that skips the shift hands its attention unshifted windows and no mask: given the windows and
the mask its twin makes inside, the attention gives its twin's value, so it only received the
error, and the block, whose code left the shift out, made it."""

from __future__ import annotations

import torch
from torch import nn

import harness

C, L, W, S = 8, 8, 4, 2  # channels, tokens, window, shift


def _mask() -> torch.Tensor:
    """-100 between tokens of one window that the shift brought from regions apart."""
    labels = torch.zeros(L)
    labels[L - W:L - S], labels[L - S:] = 1, 2
    windows = labels.view(-1, W)
    return (windows[:, None, :] != windows[:, :, None]).double() * -100.0


class _Heads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(C, C) for _ in range(4))

    def attend(self, windows, mask):
        scores = self.q(windows) @ self.k(windows).transpose(-2, -1) * C ** -0.5
        if mask is not None:
            scores = (scores.view(-1, len(mask), W, W) + mask).view(-1, W, W)
        return self.o(scores.softmax(-1) @ self.v(windows))


class OriginalAttention(_Heads):
    """Shifts, cuts windows and masks them inside (as torchvision's ShiftedWindowAttention)."""

    def forward(self, x):
        shifted = torch.roll(x, -S, 1)
        out = self.attend(shifted.reshape(-1, W, C), _mask().to(x.dtype))
        return torch.roll(out.reshape(len(x), L, C), S, 1)


class Original(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.attn, self.head = nn.LayerNorm(C), OriginalAttention(), nn.Linear(C, 3)

    def forward(self, x):
        return self.head((x + self.attn(self.norm(x))).mean(1))


class PortAttention(_Heads):
    def forward(self, windows, mask=None):
        return self.attend(windows, mask)


class Port(nn.Module):
    """The shift, the windows and the mask in the block's own code."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.attn, self.head = nn.LayerNorm(C), PortAttention(), nn.Linear(C, 3)
        self.shift = S

    def forward(self, x):
        y = torch.roll(self.norm(x), -self.shift, 1)
        mask = _mask().to(x.dtype) if self.shift else None
        y = torch.roll(self.attn(y.reshape(-1, W, C), mask).reshape(len(x), L, C), self.shift, 1)
        return self.head((x + y).mean(1))


def _compared(shift: int) -> harness.ParityReport:
    original = Original().double().eval()
    harness.randomize_(original, torch.Generator().manual_seed(0))
    port = Port().double().eval()
    port.load_state_dict(original.state_dict())
    port.shift = shift
    x = torch.randn(2, L, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return harness.compare(port, original, x)


def _status(report: harness.ParityReport, name: str) -> str | None:
    return next((r.status for r in report.rows if r.candidate == name), None)


def test_an_attention_handed_unshifted_windows_received_the_error() -> None:
    report = _compared(shift=0)
    assert not report.passed and _status(report, "attn") == "propagated", \
        f"attn is {_status(report, 'attn')}: given the windows and mask its twin makes, it computes its twin's value\n" \
        f"{report.format()}"


def test_the_port_whose_code_skipped_the_shift_made_the_error() -> None:
    report = _compared(shift=0)
    assert _status(report, "<root>") == "introduced", \
        f"the root is {_status(report, '<root>')}: its code left the shift out\n{report.format()}"


def test_an_honest_port_shifting_in_its_own_code_passes() -> None:
    report = _compared(shift=S)
    assert report.passed, report.format()


class Net(nn.Module):
    """A model around the block: the block, not the model, holds the code that shifts."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.embed, self.block = nn.Linear(C, C), block

    def forward(self, x):
        return self.block(self.embed(x))


class PortWithoutShift(Port):
    """The block with its shift, roll back and mask left out altogether (no roll by 0)."""

    def forward(self, x):
        y = self.attn(self.norm(x).reshape(-1, W, C)).reshape(len(x), L, C)
        return self.head((x + y).mean(1))


def test_a_block_leaving_out_its_shift_inside_a_model_is_the_culprit_not_its_attention() -> None:
    original = Net(Original()).double().eval()
    harness.randomize_(original, torch.Generator().manual_seed(0))
    port = Net(PortWithoutShift()).double().eval()
    port.load_state_dict(original.state_dict())
    x = torch.randn(2, L, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = harness.compare(port, original, x)
    assert report.culprit == "block", \
        f"culprit {report.culprit!r}, expected 'block': its attention, given the windows and mask its twin makes, " \
        f"computes right\n{report.format()}"
