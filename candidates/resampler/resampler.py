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
:class:`ResamplerConfig`, :data:`VARIANTS` and :func:`inner_width` are defined in
:mod:`candidates.resampler.config` (which imports no torch, for checkpoint recognition) and
re-exported here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from candidates.resampler.config import VARIANTS, ResamplerConfig, inner_width  # re-exported
from candidates.resampler.mamba import MambaMixer
from harness.checks import check_type

__all__ = [
    "ResamplerConfig", "VARIANTS", "BiMambaBlock", "BiMambaResampler", "bimamba_resampler", "bimamba_large_resampler",
    "inner_width",
]

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
# Factories
# ---------------------------------------------------------------------------------------------


def bimamba_resampler(**overrides: Any) -> BiMambaResampler:
    """The ``bimamba`` variant (hidden 1024 x 1.75); ``overrides`` replace fields (``depth=1``, ``vision_dim=768``)."""
    return BiMambaResampler(ResamplerConfig.from_preset("bimamba", **overrides))


def bimamba_large_resampler(**overrides: Any) -> BiMambaResampler:
    """The ``bimamba_large`` variant (hidden 1536 x 2.0); ``overrides`` replace fields."""
    return BiMambaResampler(ResamplerConfig.from_preset("bimamba_large", **overrides))
