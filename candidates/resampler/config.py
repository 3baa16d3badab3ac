"""BiMamba resampler configurations: :class:`ResamplerConfig` and the released variants, :data:`VARIANTS`.

Kept apart from the model file (:mod:`candidates.resampler.resampler`) because checkpoint
recognition reads the variants and must not import torch (``python -m harness inspect`` starts
in well under a second without it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from types import MappingProxyType
from typing import Any, Mapping

from harness.checks import check_choice, check_int, check_number, check_type

__all__ = ["ResamplerConfig", "VARIANTS", "inner_width"]

# hidden_dim * expand must be a whole number of channels. A ratio read back from weights
# (d_inner / hidden_dim, e.g. 200 / 96) times hidden_dim can miss the integer by float rounding
# only; anything further off (1536 * 1.3 = 1996.8) is a configuration error.
_EXPAND_REL_TOL = 1e-9


def inner_width(hidden_dim: int, expand: float) -> int:
    """``hidden_dim * expand`` as an int; ValueError if it is not a whole number."""
    product = hidden_dim * expand
    width = round(product)
    if width < 1 or abs(product - width) > _EXPAND_REL_TOL * product:
        raise ValueError(
            f"hidden_dim * expand must be a positive whole number of channels, got "
            f"{hidden_dim} * {expand!r} = {product!r}; pick expand = k / {hidden_dim} for an integer k "
            f"(e.g. {max(round(product), 1)} / {hidden_dim} = {max(round(product), 1) / hidden_dim!r})"
        )
    return width


@dataclass(frozen=True)
class ResamplerConfig:
    """Every hyper-parameter of a :class:`~candidates.resampler.resampler.BiMambaResampler`.

    ``dt_rank=None`` means upstream Mamba's "auto" rank ``ceil(hidden_dim / 16)``; it is resolved
    on construction, so a config always holds the concrete rank it builds. ``preset`` is only a
    label recording which of the :data:`VARIANTS` the values came from (a checkpoint metadata field).
    """

    vision_dim: int = 1152
    hidden_dim: int = 1536
    out_dim: int = 2048
    depth: int = 2
    expand: float = 2.0
    d_state: int = 64
    d_conv: int = 4
    dt_rank: int | None = None
    bias: bool = False
    conv_bias: bool = True
    norm_eps: float = 1e-5
    preset: str | None = None

    def __post_init__(self) -> None:
        for name in ("vision_dim", "hidden_dim", "out_dim", "d_state", "d_conv"):
            check_int(f"ResamplerConfig.{name}", getattr(self, name), minimum=1)
        check_int("ResamplerConfig.depth", self.depth, minimum=0)
        for name in ("bias", "conv_bias"):
            check_type(f"ResamplerConfig.{name}", getattr(self, name), bool)
        for name in ("expand", "norm_eps"):
            object.__setattr__(self, name, check_number(f"ResamplerConfig.{name}", getattr(self, name), above=0))
        check_type("ResamplerConfig.preset", self.preset, (str, type(None)))
        inner_width(self.hidden_dim, self.expand)
        if self.dt_rank is None:
            object.__setattr__(self, "dt_rank", math.ceil(self.hidden_dim / 16))
        check_int("ResamplerConfig.dt_rank", self.dt_rank, minimum=1,
                  fix="pass None for upstream's automatic rank ceil(hidden_dim / 16)")

    @property
    def d_inner(self) -> int:
        """Width of each mixer's inner stream, ``hidden_dim * expand`` (1024 * 1.75 = 1792)."""
        return inner_width(self.hidden_dim, self.expand)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ResamplerConfig":
        """The variant called ``name`` (a key of :data:`VARIANTS`) with some fields replaced."""
        preset = VARIANTS[check_choice("resampler preset", name, VARIANTS)]
        if "dt_rank" not in overrides and preset.dt_rank == math.ceil(preset.hidden_dim / 16):
            overrides["dt_rank"] = None  # the preset's rank is "auto": keep it auto for a new width
        return replace(preset, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ResamplerConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing keys take the defaults."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"unknown ResamplerConfig fields {unknown}; expected a subset of {cls.field_names()}")
        return cls(**values)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


VARIANTS: Mapping[str, ResamplerConfig] = MappingProxyType({
    # The trained configuration: 1024 * 1.75 = 1792 inner channels per mixer.
    "bimamba": ResamplerConfig(hidden_dim=1024, expand=1.75, d_state=64, d_conv=4, preset="bimamba"),
    # The wider default (what a model built without the checkpoint's config gets).
    "bimamba_large": ResamplerConfig(hidden_dim=1536, expand=2.0, d_state=64, d_conv=4, preset="bimamba_large"),
})
