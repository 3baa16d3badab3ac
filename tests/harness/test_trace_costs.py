"""What the tracer keeps at the least cost: one copy per piece of memory, statistics from few passes.

A full trace copies each output once; an input that is a view of an output already copied (the
permute or slice between two modules) becomes the same view of that copy. Summary statistics come
from three vectorized passes (sum, dot, aminmax) with a centred pass where the mean dominates;
they must agree with a float64 computation whatever the layout.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harness import Tracer
from harness.trace import TensorSummary


class ViewBetweenModules(nn.Module):
    """``a``'s output reaches ``b`` permuted and ``c`` sliced, or changed in place first."""

    def __init__(self, *, in_place: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 8)
        self.in_place = in_place

    def forward(self, x: torch.Tensor):
        y = self.a(x)
        z = self.b(y.permute(1, 0, 2))
        if self.in_place:
            y.mul_(2.0)
        return z, self.c(y[:, 1:])


def _trace(model: nn.Module, x: torch.Tensor) -> dict:
    with torch.no_grad(), Tracer(model, mode="full") as tracer:
        model(x)
    return tracer.by_key()


def test_a_view_between_modules_is_kept_as_the_same_view_of_the_producers_copy():
    model, x = ViewBetweenModules().eval(), torch.randn(2, 3, 8)
    records = _trace(model, x)
    with torch.no_grad():
        y = model.a(x)
    kept = records["a#0"].outputs[""]
    for key, expected in (("b#0", y.permute(1, 0, 2)), ("c#0", y[:, 1:])):
        view = records[key].inputs["args.0"]
        assert torch.equal(view, expected), f"{key}'s recorded input differs from what it received"
        assert view.untyped_storage().data_ptr() == kept.untyped_storage().data_ptr(), \
            f"{key}'s input was copied again instead of viewing a's kept output"


def test_a_view_changed_in_place_after_its_base_was_copied_is_copied_as_it_is_then():
    model, x = ViewBetweenModules(in_place=True).eval(), torch.randn(2, 3, 8)
    records = _trace(model, x)
    with torch.no_grad():
        y = model.a(x)
    assert torch.equal(records["a#0"].outputs[""], y), "a's kept output followed the later in-place change"
    assert torch.equal(records["c#0"].inputs["args.0"], (y * 2.0)[:, 1:]), "c's input is not the doubled tensor it saw"


@pytest.mark.parametrize("case", ["channels_last_view", "large_mean", "constant", "integer", "bfloat16"])
def test_summary_statistics_agree_with_float64_whatever_the_layout(case: str):
    g = torch.Generator().manual_seed(0)
    x = {
        "channels_last_view": torch.randn(2, 9, 10, 16, generator=g).permute(0, 3, 1, 2),
        "large_mean": torch.randn(4096, generator=g) * 1e-3 + 100.0,
        "constant": torch.full((7, 5), 3.25),
        "integer": torch.randint(-50, 50, (33, 3), generator=g),
        "bfloat16": torch.randn(64, 64, generator=g).to(torch.bfloat16),
    }[case]
    s, exact = TensorSummary.of(x), x.double()
    assert s.shape == tuple(x.shape) and s.nonfinite == 0
    assert math.isclose(s.mean, exact.mean().item(), rel_tol=1e-6, abs_tol=1e-6), f"mean {s.mean} vs {exact.mean().item()}"
    assert math.isclose(s.std, exact.std().item(), rel_tol=1e-4, abs_tol=1e-9), f"std {s.std} vs {exact.std().item()}"
    assert s.absmax == exact.abs().max().item(), f"absmax {s.absmax} vs {exact.abs().max().item()}"
