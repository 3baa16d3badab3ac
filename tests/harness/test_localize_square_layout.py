"""A stage given the reference's NCHW image may turn it into its own NHWC layout inside: where
C == H == W the two layouts share a shape, and only the values tell them apart. Such twins are
compared through the permutation their values agree in (within the reference's own rounding: a
float64 reference computing its softmax in float32; of several that hold, the closest: values far
below that bound agree in every layout), so a faithful port passes and an error after the stage is
blamed where it is made; a module given the reference's layout that returns its
tokens rolled (a roll back forgotten) still fails."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import compare_port

C = 8  # the stage's channels, and its map's height and width: NHWC and NCHW share a shape


class _OriginalStage(nn.Module):
    """Patches, then a channel gate; ``rounding``: the gate's softmax in float32, as transformers does."""

    def __init__(self, rounding: bool = False) -> None:
        super().__init__()
        self.proj, self.gate = nn.Conv2d(3, C, 4, 4), nn.Conv2d(C, C, 1)
        self.rounding = rounding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        gate = self.gate(y).softmax(1, dtype=torch.float32).to(y.dtype) if self.rounding else self.gate(y).softmax(1)
        return y * gate


class _Original(nn.Module):
    def __init__(self, rounding: bool = False) -> None:
        super().__init__()
        self.stage, self.head = _OriginalStage(rounding), nn.Conv2d(C, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(x)).mean((2, 3))


class _PortStage(nn.Module):
    """The same stage written channels last: it returns ``(B, H, W, C)``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.gate = nn.Conv2d(3, C, 4, 4), nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x).permute(0, 2, 3, 1)
        return y * self.gate(y).softmax(-1)


class _Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stage, self.head = _PortStage(), nn.Conv2d(C, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(x).permute(0, 3, 1, 2)).mean((2, 3))


def _image() -> torch.Tensor:
    return torch.randn(2, 3, 4 * C, 4 * C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _compare(rounding: bool = False, change=lambda model: None, scale: float = 1.0) -> harness.Report:
    original = _Original(rounding).double().eval()
    harness.randomize_(original, torch.Generator().manual_seed(0))
    with torch.no_grad():
        original.stage.proj.weight.mul_(scale), original.stage.proj.bias.mul_(scale)
    return compare_port(_Port().double().eval(), original, _image(), change)


def _row(report: harness.Report, candidate: str):
    return next(r for r in report.rows if r.candidate == candidate)


def test_a_stage_returning_channels_last_from_a_channels_first_image_is_compared_through_that_permutation() -> None:
    row = _row(_compare(), "stage")
    assert row.adapter == "permute(0,3,1,2)" and row.metrics.rel_l2 < 1e-12, \
        f"stage row compared through {row.adapter!r}, rel_l2 {row.metrics.rel_l2:.3g}"


def test_a_stage_of_values_far_below_the_rounding_bound_is_compared_through_the_permutation_closest_to_its_twin() -> None:
    # features of 1e-7 (a randomly initialized model deep inside) agree within float32's atol in
    # every layout: only their errors tell NHWC from NCHW
    row = _row(_compare(scale=1e-6), "stage")
    assert row.adapter == "permute(0,3,1,2)" and row.passed, \
        f"stage row compared through {row.adapter!r}, rel_l2 {row.metrics.rel_l2:.3g}, passed {row.passed}"


def test_such_a_stage_passes_when_the_reference_computes_its_softmax_in_float32() -> None:
    report = _compare(rounding=True)
    row = _row(report, "stage")
    assert report.passed and row.adapter == "permute(0,3,1,2)", \
        f"stage row through {row.adapter!r}, rel_l2 {row.metrics.rel_l2:.3g}\n{report.format()}"


def test_the_weight_map_of_such_a_port_verifies_when_the_reference_computes_its_softmax_in_float32() -> None:
    original = _Original(rounding=True).double().eval()
    weights = harness.map_weights(_Port().double().eval(), original, _image())
    assert weights.verified, [c["text"] for c in weights.conflicts]


def test_an_error_after_such_a_stage_is_blamed_where_it_is_made() -> None:
    report = _compare(rounding=True, change=lambda port: port.head.bias.add_(1e-3))
    assert report.culprit == "head", f"culprit {report.culprit!r}, expected 'head'\n{report.format()}"


def test_an_error_after_a_stage_of_values_far_below_the_rounding_bound_is_blamed_where_it_is_made() -> None:
    report = _compare(change=lambda port: port.head.bias.add_(1e-3), scale=1e-6)
    assert report.culprit == "head", f"culprit {report.culprit!r}, expected 'head'\n{report.format()}"


class _OriginalHead(nn.Module):
    """Reads the list of NCHW maps of both stages."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0, self.lin1 = nn.Linear(C, 4), nn.Linear(2 * C, 4)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.lin0(maps[0].permute(0, 2, 3, 1)).mean((1, 2)) + self.lin1(maps[1].permute(0, 2, 3, 1)).mean((1, 2))


class _PortHead(_OriginalHead):
    """Reads the two NHWC maps as two arguments: another call structure, so a re-run translates."""

    def forward(self, square: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
        return self.lin0(square).mean((1, 2)) + self.lin1(small).mean((1, 2))


class _OriginalTwoStages(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stage, self.down, self.head = _OriginalStage(rounding=True), nn.Conv2d(C, 2 * C, 2, 2), _OriginalHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        square = self.stage(x)
        return self.head([square, self.down(square)])


class _PortTwoStages(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stage, self.down, self.head = _PortStage(), nn.Conv2d(C, 2 * C, 2, 2), _PortHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        square = self.stage(x)
        return self.head(square, self.down(square.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


def test_a_module_re_run_on_the_references_square_map_gets_it_in_its_own_layout() -> None:
    original = _OriginalTwoStages().double().eval()
    harness.randomize_(original, torch.Generator().manual_seed(0))
    report = compare_port(_PortTwoStages().double().eval(), original, _image(), lambda port: port.down.bias.add_(1e-3))
    assert report.introduced == ["down"], \
        f"introduced {report.introduced}, expected ['down'] alone: the head re-run on the NCHW map it reads as NHWC"


class _Mixer(nn.Module):
    def __init__(self, roll: int = 0) -> None:
        super().__init__()
        self.fc, self.roll = nn.Linear(C, C), roll

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).roll(self.roll, 1)


class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix, self.head = _Mixer(), nn.Linear(C, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(x))


def test_a_module_given_the_references_layout_that_returns_its_tokens_rolled_is_still_the_culprit() -> None:
    original = _Tokens().double().eval()
    harness.randomize_(original, torch.Generator().manual_seed(0))
    tokens = torch.randn(2, 5, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = compare_port(_Tokens().double().eval(), original, tokens, lambda port: setattr(port.mix, "roll", 1))
    assert report.culprit == "mix" and _row(report, "mix").adapter is None, \
        f"culprit {report.culprit!r}, mix row through {_row(report, 'mix').adapter!r}: a roll hides the error"
