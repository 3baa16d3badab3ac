"""A module returning its twin's values in another order, where its twin returns them in another
layout (a window attention reversing its own windows against one returning the windows), is said to
do so through that layout, not blamed on a reshape the twin does not write: the window reverse whose
permute reads each window transposed."""

from __future__ import annotations

import torch
from torch import nn

import harness
from harness.diagnose import rearrangement
from harness.metrics import DEFAULT_TOLERANCES
from helpers import compare_port, findings_text

C, WS = 4, 4


def _partition(x: torch.Tensor) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // WS, WS, w // WS, WS, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, WS * WS, c)


def _reverse(x: torch.Tensor, h: int, w: int, dims: tuple[int, ...] = (0, 1, 3, 2, 4, 5)) -> torch.Tensor:
    x = x.view(-1, h // WS, w // WS, WS, WS, x.shape[-1])
    return x.permute(*dims).reshape(-1, h, w, x.shape[-1])


class _WindowProj(nn.Module):
    """The reference's window op: windows in, windows out."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(C, C)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.proj(windows)


class _RefBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _WindowProj()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _reverse(self.attn(_partition(x)), *x.shape[1:3])


class _MapProj(nn.Module):
    """The port's window op: the map in, the map out, its windows cut and put back inside;
    ``dims``: the permute putting them back."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.proj, self.dims = nn.Linear(C, C), dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _reverse(self.proj(_partition(x)), *x.shape[1:3], dims=self.dims)


class _PortBlock(nn.Module):
    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.attn = _MapProj(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


def _report(dims: tuple[int, ...]) -> harness.Report:
    reference = _RefBlock().double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    x = torch.randn(1, 8, 8, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return compare_port(_PortBlock(dims).double().eval(), reference, x)


def test_a_port_reversing_its_windows_right_passes() -> None:
    report = _report((0, 1, 3, 2, 4, 5))
    assert report.passed, f"expected the right window reverse to pass, got:\n{findings_text(report.diagnosis)}"


def test_windows_put_back_transposed_are_said_to_come_out_in_another_order() -> None:
    report = _report((0, 1, 4, 2, 3, 5))
    why = findings_text(report.diagnosis)
    assert report.culprit == "attn", f"expected the culprit attn, got {report.culprit}"
    expected = ("attn: returns the reference's values in another order (through window partition 4x4): along dim 1, "
                "transposed as a 4x4 grid")
    assert expected in why.splitlines()[0], f"expected each window's tokens transposed, got:\n{why}"
    assert "extra reshape" not in why, f"a reshape the twin does not write is no fault, got:\n{why}"


def test_a_square_grid_read_column_by_column_is_said_transposed() -> None:
    t = torch.randn(2, 9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    swapped = t.view(2, 3, 3, 3).transpose(1, 2).reshape(2, 9, 3)
    assert rearrangement(swapped, t, DEFAULT_TOLERANCES["float64"]) == [
        (1, "transposed as a 3x3 grid (position row * 3 + column holds the reference's column * 3 + row)")]


class _RefMlp(nn.Module):
    """Windows through two linears, put back into the map after."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(C, C), nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _reverse(self.fc2(torch.tanh(self.fc1(_partition(x)))), *x.shape[1:3])


class _PortMlp(_RefMlp):
    """The map put back between the two linears, each window transposed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _reverse(self.fc1(_partition(x)), *x.shape[1:3], dims=(0, 1, 4, 2, 3, 5))
        return self.fc2(torch.tanh(y))


def test_an_op_fed_the_windows_transposed_in_another_layout_is_said_to_receive_them_reordered() -> None:
    reference = _RefMlp().double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    x = torch.randn(1, 8, 8, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = compare_port(_PortMlp().double().eval(), reference, x)
    why = findings_text(report.diagnosis)
    expected = ("tanh receives the reference's values in another order (through window partition 4x4): along dim 1, "
                "transposed as a 4x4 grid")
    assert expected in why.splitlines()[0], f"expected tanh's input named reordered, got:\n{why}"
