"""A float64 reference that computes some operations in a narrower float (transformers' float32
softmax) leaves its twins in another layout apart by that rounding: the layout a row of another
shape is measured in is still the one its values agree in, not the first whose shape fits, so a
row that passes against the reference's own rounding shows the error of that layout."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import compare_port

C, H, W = 8, 6, 8


class _OriginalStage(nn.Module):
    """Patches as a map ``(B, C, H, W)``, gated by their softmax over the channels, rounded first
    to ``narrow`` (a float32 softmax; a bfloat16 cast)."""

    def __init__(self, narrow: torch.dtype, cast: bool) -> None:
        super().__init__()
        self.proj, self.narrow, self.cast = nn.Conv2d(3, C, 4, 4), narrow, cast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        if self.cast:
            y = y.to(self.narrow).to(x.dtype)
            return y * y.softmax(1)
        return y * y.softmax(1, dtype=self.narrow).to(x.dtype)


class _Original(nn.Module):
    def __init__(self, narrow: torch.dtype = torch.float32, cast: bool = False) -> None:
        super().__init__()
        self.stage, self.head = _OriginalStage(narrow, cast), nn.Conv2d(C, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(x)).mean((2, 3))


class _PortStage(nn.Module):
    """The same stage returning tokens ``(B, H*W, C)``, all in float64."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, C, 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x).flatten(2).transpose(1, 2)
        return y * y.softmax(-1)


class _Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stage, self.head = _PortStage(), nn.Conv2d(C, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(x).transpose(1, 2).unflatten(2, (H, W))).mean((2, 3))


def _stage_row(narrow: torch.dtype = torch.float32, cast: bool = False):
    original = _Original(narrow, cast).double().eval()
    harness.randomize_(original, torch.Generator().manual_seed(0))
    image = torch.randn(2, 3, 4 * H, 4 * W, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = compare_port(_Port().double().eval(), original, image)
    return report, next(r for r in report.rows if r.candidate == "stage")


def test_a_row_of_another_shape_within_the_references_float32_rounding_is_measured_in_the_layout_its_values_agree_in() -> None:
    report, row = _stage_row()
    assert report.passed and row.adapter == "permute(0,2,1) + reshape(2, 8, 6, 8)" and row.metrics.rel_l2 < 1e-6, \
        f"stage row through {row.adapter!r}: rel_l2 {row.metrics.rel_l2:.3g}, cosine {row.metrics.cosine:.3g}"


def test_a_row_passed_against_the_references_bfloat16_rounding_shows_the_error_of_the_layout_it_was_judged_in() -> None:
    report, row = _stage_row(torch.bfloat16, cast=True)
    assert report.passed and row.passed and row.metrics.rel_l2 <= 2 * (row.noise.error + row.noise.floor), \
        f"stage row passes through {row.adapter!r} with rel_l2 {row.metrics.rel_l2:.3g}, judged error " \
        f"{row.noise.error:.3g} against a floor of {row.noise.floor:.3g}"
