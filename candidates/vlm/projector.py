"""Modality projector: DINOv3 patch tokens -> language-model embeddings, on rectangular grids.

Upstream: nanoVLM ``models/modality_projector.py`` (pixel shuffle + one linear layer, no bias).

Pixel shuffle (space-to-depth) folds every ``s x s`` block of neighbouring patch tokens into one
token of width ``s*s*D``: a grid ``(Hp, Wp)`` becomes ``(Gh, Gw) = (Hp/s, Wp/s)``, ``s*s`` times
fewer tokens for the language model. Within a folded token the features are ordered
``(row in block, column in block, channel)``, nanoVLM's order, so its weights load unchanged.

Deliberate differences from nanoVLM:

- The grid is passed explicitly (``grid=(Hp, Wp)``, from :class:`candidates.vlm.dinov3.DinoV3Output`);
  the legacy square path (``grid=None``, side ``sqrt(N)``) remains for square-only callers and
  refuses a non-square token count with a ``ValueError`` instead of an ``assert``.
- Several shuffle factors may be configured, one projection each (``proj.s2``, ``proj.s4``...),
  so that a token budget can pick the factor per image (``candidates.vlm.processor``).
- CLS and register tokens are dropped here when ``num_prefix_tokens`` says how many there are.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.checks import check_int, check_type, check_value, type_error

__all__ = [
    "ProjectorConfig", "ModalityProjector", "PixelShuffle", "check_factors", "check_grid", "check_int_like",
    "pixel_shuffle_2d", "pixel_unshuffle_2d", "pixel_shuffle_square",
]


@dataclass(frozen=True)
class ProjectorConfig:
    """Attributes:
        vision_dim: width ``D`` of the encoder tokens.
        text_dim: width of the language model's embeddings.
        factors: allowed pixel-shuffle factors; the first is the default.
        num_prefix_tokens: CLS + register tokens in front of the patch tokens, dropped first.
    """

    vision_dim: int
    text_dim: int
    factors: tuple[int, ...] = (2,)
    num_prefix_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("vision_dim", "text_dim"):
            check_int(f"ProjectorConfig.{name}", getattr(self, name), minimum=1)
        check_factors("ProjectorConfig.factors", self.factors)
        check_int("ProjectorConfig.num_prefix_tokens", self.num_prefix_tokens, minimum=0)


def check_factors(name: str, factors: Any) -> tuple[int, ...]:
    """``factors`` if it is a non-empty tuple of distinct ints >= 1 (pixel-shuffle factors), else an error."""
    expected = "a non-empty tuple of distinct ints >= 1"
    check_type(name, factors, tuple, what=expected, fix="write factors=(2,) for a single factor")
    for factor in factors:
        check_type(name, factor, int, what=expected)
    return check_value(name, factors, bool(factors) and min(factors) >= 1 and len(set(factors)) == len(factors),
                       expected=expected)


def _index(value: Any) -> int:
    """``operator.index`` (ints, numpy integers, 0-d integer tensors), refusing bools: True is never a size."""
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is a bool")
    return operator.index(value)


def check_int_like(name: str, value: Any, *, minimum: int | None = None) -> int:
    """:func:`harness.checks.check_int` that also takes int-likes (numpy integers, 0-d integer tensors),
    returned as a Python int: sizes often come from array shapes and tensor arithmetic."""
    try:
        value = _index(value)
    except TypeError:
        pass  # check_int words the TypeError
    return check_int(name, value, minimum=minimum)


def check_grid(name: str, grid: Any, *, expected: str = "(rows, columns), two ints >= 1") -> tuple[int, int]:
    """Two Python ints >= 1 from a pair of ints or int-likes (a tuple, a numpy array, a 1-D tensor).

    A ``TypeError`` when ``grid`` is not a pair of integers (``'ab'``, ``(4.0, 6.0)``, ``24``,
    three sides), a ``ValueError`` when a side is below 1; either message quotes the whole grid.
    """
    try:
        sides = tuple(_index(side) for side in grid)
    except TypeError:  # not iterable, or a side that is no integer
        raise type_error(name, grid, expected) from None
    if len(sides) != 2:
        raise type_error(name, grid, expected)
    check_value(name, grid, min(sides) >= 1, expected=expected)
    return sides  # type: ignore[return-value]


def _check_grid(x: torch.Tensor, grid: tuple[int, int], factor: int) -> tuple[int, int]:
    if x.ndim != 3:
        raise ValueError(f"tokens must be (B, N, D), got shape {tuple(x.shape)}")
    hp, wp = check_grid("grid", grid)
    if x.shape[1] != hp * wp:
        raise ValueError(f"token count {x.shape[1]} does not match grid {hp}x{wp} = {hp * wp}")
    if hp % factor or wp % factor:
        raise ValueError(f"grid {hp}x{wp} is not divisible by the pixel-shuffle factor {factor}")
    return hp, wp


def pixel_shuffle_2d(x: torch.Tensor, grid: tuple[int, int], factor: int) -> torch.Tensor:
    """``(B, Hp*Wp, D)`` on grid ``(Hp, Wp)`` -> ``(B, Gh*Gw, s*s*D)``, ``(Gh, Gw) = (Hp/s, Wp/s)``."""
    hp, wp = _check_grid(x, grid, factor)
    batch, _, dim = x.shape
    s, gh, gw = factor, hp // factor, wp // factor
    x = x.reshape(batch, gh, s, gw, s, dim)  # (B, Gh, s, Gw, s, D)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, Gh, Gw, s_row, s_col, D)
    return x.reshape(batch, gh * gw, s * s * dim)  # (B, Gh*Gw, s*s*D)


def pixel_unshuffle_2d(x: torch.Tensor, grid: tuple[int, int], factor: int) -> torch.Tensor:
    """Inverse of :func:`pixel_shuffle_2d`: ``(B, Gh*Gw, s*s*D)`` on grid ``(Gh, Gw)`` -> ``(B, Hp*Wp, D)``."""
    gh, gw = _check_grid(x, grid, 1)
    batch, _, width = x.shape
    s = factor
    if width % (s * s):
        raise ValueError(f"token width {width} is not divisible by factor**2 = {s * s}")
    x = x.reshape(batch, gh, gw, s, s, width // (s * s))  # (B, Gh, Gw, s_row, s_col, D)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, Gh, s_row, Gw, s_col, D)
    return x.reshape(batch, gh * s * gw * s, width // (s * s))  # (B, Hp*Wp, D)


def pixel_shuffle_square(x: torch.Tensor, factor: int) -> torch.Tensor:
    """nanoVLM's legacy shuffle, kept in its own formulation: the grid is assumed square, side ``sqrt(N)``.

    Written independently of :func:`pixel_shuffle_2d` (a square ``(B, h, w, D)`` view first, as
    upstream) so that the two can be tested against each other.
    """
    if x.ndim != 3:
        raise ValueError(f"tokens must be (B, N, D), got shape {tuple(x.shape)}")
    batch, seq, dim = x.shape
    side = math.isqrt(seq)
    if side * side != seq:
        raise ValueError(
            f"the legacy square pixel shuffle needs a square token count, got {seq}; "
            f"pass grid=(Hp, Wp) for rectangular images"
        )
    if side % factor:
        raise ValueError(f"grid {side}x{side} is not divisible by the pixel-shuffle factor {factor}")
    out_side = side // factor
    x = x.view(batch, side, side, dim)  # (B, h, w, D)
    x = x.reshape(batch, out_side, factor, out_side, factor, dim)  # (B, h/s, s, w/s, s, D)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, h/s, w/s, s_row, s_col, D)
    return x.reshape(batch, out_side * out_side, factor * factor * dim)  # (B, (h/s)*(w/s), s*s*D)


class PixelShuffle(nn.Module):
    """Module form of the shuffle (so tracing sees it); ``grid=None`` is the legacy square path."""

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None, factor: int) -> torch.Tensor:
        if grid is None:
            return pixel_shuffle_square(x, factor)
        return pixel_shuffle_2d(x, grid, factor)


class ModalityProjector(nn.Module):
    """Drop prefix tokens, pixel-shuffle by ``factor``, project linearly to ``text_dim``."""

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        self.config = check_type("config", config, ProjectorConfig)
        self.shuffle = PixelShuffle()
        self.proj = nn.ModuleDict({
            f"s{s}": nn.Linear(config.vision_dim * s * s, config.text_dim, bias=False) for s in config.factors
        })
        for linear in self.proj.values():
            nn.init.normal_(linear.weight, std=0.02)

    def forward(
        self, x: torch.Tensor, grid: tuple[int, int] | None = None, *, factor: int | None = None
    ) -> torch.Tensor:
        """``x``: encoder tokens ``(B, prefix + Hp*Wp, D)``; ``grid``: ``(Hp, Wp)`` -> ``(B, Gh*Gw, text_dim)``."""
        factor = self.config.factors[0] if factor is None else factor
        if factor not in self.config.factors:
            raise ValueError(f"pixel-shuffle factor {factor} is not configured; expected one of {self.config.factors}")
        if x.ndim != 3 or x.shape[-1] != self.config.vision_dim:
            raise ValueError(f"tokens must be (B, N, {self.config.vision_dim}), got shape {tuple(x.shape)}")
        x = x[:, self.config.num_prefix_tokens:]  # (B, Hp*Wp, D): patch tokens only
        x = self.shuffle(x, grid, factor)  # (B, Gh*Gw, s*s*D)
        return self.proj[f"s{factor}"](x)  # (B, Gh*Gw, text_dim)
