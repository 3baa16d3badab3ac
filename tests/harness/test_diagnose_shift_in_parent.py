"""A shifted-window block whose reference shifts the map and cuts its windows in the block, then
runs its attention on the windows, where the port's attention takes the whole map and shifts and
cuts it itself: the twin attentions' inputs differ by a layout that rolls values. A wrong shift in
the port is then said through the blocks, which both shift: the roll's shifts against the
reference's, or the roll missing, never a reshape the port needs to cut its windows."""

import torch
from torch import nn

import harness
from port_toys import randomized
from helpers import findings_text

WS, SHIFT, H, W, C = 4, 2, 8, 8, 16


def _windows(x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    return x.reshape(b, H // WS, WS, W // WS, WS, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, WS * WS, C)


def _merged(w: torch.Tensor, b: int) -> torch.Tensor:
    return w.reshape(b, H // WS, W // WS, WS, WS, C).permute(0, 1, 3, 2, 4, 5).reshape(b, H, W, C)


class WindowMix(nn.Module):
    """A linear mixing the tokens of each window: the reference's attention, given windows."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(WS * WS, WS * WS)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.mix(w.transpose(1, 2)).transpose(1, 2)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(C), WindowMix()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.roll(self.norm(x), (-SHIFT, -SHIFT), (1, 2))
        y = _merged(self.attn(_windows(y)), x.shape[0])
        return x + torch.roll(y, (SHIFT, SHIFT), (1, 2))


class ShiftedMix(nn.Module):
    """``WindowMix`` taking the whole map, shifting it by ``shift`` and cutting it itself."""

    def __init__(self, shift: int) -> None:
        super().__init__()
        self.mix, self.shift = nn.Linear(WS * WS, WS * WS), shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.roll(x, (-self.shift, -self.shift), (1, 2)) if self.shift else x
        y = _merged(self.mix(_windows(y).transpose(1, 2)).transpose(1, 2), x.shape[0])
        return torch.roll(y, (self.shift, self.shift), (1, 2)) if self.shift else y


class PortBlock(nn.Module):
    def __init__(self, shift: int) -> None:
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(C), ShiftedMix(shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


class Net(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.embed, self.block, self.head = nn.Linear(C, C), block, nn.Linear(C, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(x)))


def _report(shift: int) -> "harness.Report":
    reference = randomized(Net(Block()), seed=8)
    candidate = Net(PortBlock(shift)).double().eval()
    candidate.load_state_dict(reference.state_dict())
    x = torch.randn(2, H, W, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return harness.compare(candidate, reference, x)


def _why(report: "harness.Report") -> str:
    return report.diagnosis[0]["text"] if report.diagnosis else "(no why)"


def test_port_shifting_inside_its_attention_passes() -> None:
    report = _report(SHIFT)
    assert report.passed, f"expected the right port to pass, got:\n{report.format()}"


def test_shift_of_another_amount_names_both_rolls() -> None:
    report = _report(1)
    why = _why(report)
    assert not report.passed and why.startswith("block.attn: roll") \
        and "(-1, -1) in the candidate, (-2, -2) in the reference" in why, \
        f"expected the roll's shifts against the reference's, got culprit {report.culprit}, why: {_why(report)}\n" \
        f"{findings_text(report.diagnosis)}"


def test_shift_left_out_names_the_roll_missing() -> None:
    report = _report(0)
    assert not report.passed and "roll" in _why(report) and "missing" in _why(report), \
        f"expected the roll named missing, got culprit {report.culprit}, why: {_why(report)}\n" \
        f"{findings_text(report.diagnosis)}"
