"""Values reordered along an axis are named as that reordering where the two sides agree only to
rounding (each computed its values through its own ops: a class token joined before the patch
tokens instead of after them), not only where they hold bitwise the same numbers; values that
differ by more than the tolerance are still no reordering."""

from __future__ import annotations

import torch

from harness.diagnose import rearrangement
from harness.metrics import DEFAULT_TOLERANCES

TOL = DEFAULT_TOLERANCES["float64"]


def _joined(rounding: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``cat([cls, tokens])`` (the class token expanded over the tokens) and the reference's
    ``cat([tokens, cls])``, its tokens and class token off by ``rounding``."""
    g = torch.Generator().manual_seed(0)
    tokens, cls = (torch.randn(1, n, 32, generator=g, dtype=torch.float64) for n in (16, 1))
    noisy = [t + torch.randn(t.shape, generator=g, dtype=torch.float64) * rounding for t in (tokens, cls)]
    return torch.cat([cls.expand(-1, 16, -1), tokens], -1), torch.cat([noisy[0], noisy[1].expand(-1, 16, -1)], -1)


def test_halves_joined_in_another_order_agreeing_to_rounding_read_as_rolled():
    found = rearrangement(*_joined(1e-15), TOL)
    assert found == [(2, "rolled by -32 (torch.roll of the reference's by -32)")], \
        f"expected the features rolled by half, got {found}"


def test_halves_joined_in_another_order_beyond_the_tolerance_are_no_reordering():
    assert rearrangement(*_joined(1e-3), TOL) == [], "values differing past the tolerance are said reordered"
