"""Tiny resamplers and the checkpoint files a training run leaves, for the resampler family's tests."""

from __future__ import annotations

from pathlib import Path

import torch

from candidates.resampler.resampler import BiMambaResampler, ResamplerConfig

TINY = ResamplerConfig(vision_dim=6, hidden_dim=8, out_dim=5, depth=2, expand=1.5, d_state=3, d_conv=3, preset="tiny")
# Where a Lightning module that holds the resampler as ``resampler_module.resampler`` stores it.
WRAPPER_PREFIX = "resampler_module.resampler."


def trained(config: ResamplerConfig = TINY, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> BiMambaResampler:
    """A resampler whose every tensor differs from its init, so a swapped or dropped tensor cannot hide."""
    torch.manual_seed(seed)
    model = BiMambaResampler(config).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def features(config: ResamplerConfig, dtype: torch.dtype = torch.float32, tokens: int = 5) -> torch.Tensor:
    return torch.randn(2, tokens, config.vision_dim, generator=torch.Generator().manual_seed(1), dtype=dtype)


def wrapped_state(model: BiMambaResampler, prefixes: tuple[str, ...] = (WRAPPER_PREFIX,)) -> dict[str, torch.Tensor]:
    """The resampler under each of ``prefixes`` next to a vision encoder's and a language model's weights."""
    state = {f"{prefix}{k}": v for prefix in prefixes for k, v in model.state_dict().items()}
    state["vision_encoder.patch_embed.weight"] = torch.randn(4, 3)
    state["language_model.lm_head.weight"] = torch.randn(5, 4)
    return state


def lightning_ckpt(path: Path, model: BiMambaResampler, prefixes: tuple[str, ...] = (WRAPPER_PREFIX,)) -> Path:
    """A Lightning-style ``.ckpt``: :func:`wrapped_state` inside ``state_dict``, with trainer state around it."""
    torch.save({
        "state_dict": wrapped_state(model, prefixes),
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "optimizer_states": [{"state": {0: {"step": torch.tensor(120.0)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}],
    }, path)
    return path
