"""BiMamba resampler: vision features ``(B, N, vision_dim)`` -> language-model width ``(B, N, out_dim)``.

Design: ``input_proj`` (vision_dim -> hidden_dim), ``depth`` pre-norm residual BiMamba blocks,
a final LayerNorm and ``output_proj`` (hidden_dim -> out_dim). A BiMamba block runs two
selective-scan mixers over the token sequence, one left-to-right (``forward_block``) and one
right-to-left (``backward_block``: flip the tokens, mix, flip back), and adds their mean to the
residual stream, so every output token sees the whole sequence.
Related work: Vision Mamba (Zhu et al. 2024, https://arxiv.org/abs/2401.09417) for the
bidirectional scan; the mixer itself is :class:`candidates.resampler.mamba.MambaMixer`.

The configuration is a frozen dataclass and is the single source of truth for every width: a
checkpoint stores it next to the weights (see ``checkpoint.py``), so a model is never rebuilt
from defaults that differ from the ones it was trained with. The released configurations are
the read-only :data:`VARIANTS`; ``ResamplerConfig.from_preset(name, **overrides)`` derives others.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from types import MappingProxyType
from typing import Any, Mapping

import torch
from torch import nn

from candidates.resampler.mamba import MambaMixer
from harness.checks import check_choice, check_int, check_number, check_type

__all__ = [
    "ResamplerConfig", "VARIANTS", "BiMambaBlock", "BiMambaResampler", "bimamba_resampler", "bimamba_large_resampler",
    "inner_width",
]

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
    """Every hyper-parameter of a :class:`BiMambaResampler`.

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


class BiMambaBlock(nn.Module):
    """``x + (forward_block(norm(x)) + flip(backward_block(flip(norm(x))))) / 2``, flips over tokens."""

    def __init__(self, config: ResamplerConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_dim, eps=config.norm_eps)
        self.forward_block = _mixer(config)
        self.backward_block = _mixer(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)  # (batch, tokens, hidden_dim)
        left_to_right = self.forward_block(h)
        right_to_left = self.backward_block(h.flip(1)).flip(1)
        return x + 0.5 * (left_to_right + right_to_left)


def _mixer(config: ResamplerConfig) -> MambaMixer:
    return MambaMixer(
        config.hidden_dim,
        d_inner=config.d_inner,
        d_state=config.d_state,
        d_conv=config.d_conv,
        dt_rank=config.dt_rank,
        bias=config.bias,
        conv_bias=config.conv_bias,
    )


class BiMambaResampler(nn.Module):
    """Maps ``(batch, tokens, vision_dim)`` vision features to ``(batch, tokens, out_dim)``."""

    def __init__(self, config: ResamplerConfig) -> None:
        super().__init__()
        self.config = check_type("BiMambaResampler(config)", config, ResamplerConfig)
        self.input_proj = nn.Linear(config.vision_dim, config.hidden_dim)
        self.blocks = nn.ModuleList(BiMambaBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.hidden_dim, eps=config.norm_eps)
        self.output_proj = nn.Linear(config.hidden_dim, config.out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 3 or features.shape[-1] != self.config.vision_dim:
            raise ValueError(
                f"BiMambaResampler expects (batch, tokens, {self.config.vision_dim}) features, "
                f"got {tuple(features.shape)}"
            )
        x = self.input_proj(features)  # (batch, tokens, hidden_dim)
        for block in self.blocks:
            x = block(x)
        return self.output_proj(self.norm(x))  # (batch, tokens, out_dim)


# ---------------------------------------------------------------------------------------------
# Variants and factories
# ---------------------------------------------------------------------------------------------

VARIANTS: Mapping[str, ResamplerConfig] = MappingProxyType({
    # The trained configuration: 1024 * 1.75 = 1792 inner channels per mixer.
    "bimamba": ResamplerConfig(hidden_dim=1024, expand=1.75, d_state=64, d_conv=4, preset="bimamba"),
    # The wider default (what a model built without the checkpoint's config gets).
    "bimamba_large": ResamplerConfig(hidden_dim=1536, expand=2.0, d_state=64, d_conv=4, preset="bimamba_large"),
})


def bimamba_resampler(**overrides: Any) -> BiMambaResampler:
    """The ``bimamba`` variant (hidden 1024 x 1.75); ``overrides`` replace fields (``depth=1``, ``vision_dim=768``)."""
    return BiMambaResampler(ResamplerConfig.from_preset("bimamba", **overrides))


def bimamba_large_resampler(**overrides: Any) -> BiMambaResampler:
    """The ``bimamba_large`` variant (hidden 1536 x 2.0); ``overrides`` replace fields."""
    return BiMambaResampler(ResamplerConfig.from_preset("bimamba_large", **overrides))
