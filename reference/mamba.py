"""Reference adapter: transformers' ``MambaMixer`` (pure-PyTorch path) and the ``mamba_mixer`` pairs.

Upstream: ``transformers.models.mamba.modeling_mamba.MambaMixer`` (transformers 5.23.0).
Candidate: :class:`candidates.resampler.mamba.MambaMixer`; parameter names are identical, so
the weight transfer is the identity.

What the trace can and cannot line up: upstream's pure path calls ``in_proj``, ``x_proj`` and
``out_proj`` as modules but uses ``conv1d``, ``act`` and ``dt_proj`` only through their weights
inside functional helpers (``causal_conv1d_fn``, ``dt_proj.weight @ ...``, the bias and softplus
inside ``mamba_selective_scan``). Those three candidate modules therefore have no reference twin
and stay unmatched; an error made there is localized to the mixer itself (the root row).

Precision: upstream calls ``.float()`` on ``A_log``, ``D``, the step bias, ``B`` and the scan
input, meaning "at least float32" for half-precision runs. On a float64 run that rounds those
tensors to float32 and caps the reference at ~4e-8 absolute error, so a float64 comparison
could not tell a bug from rounding. :func:`float_keeps_float64` runs upstream's code with
``Tensor.float()`` leaving float64 tensors alone; for every other dtype it is exactly
``Tensor.float()`` (tested bitwise), so float32 runs are untouched.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Any, Iterator

import torch
from torch import nn
from transformers import MambaConfig
from transformers.models.mamba import modeling_mamba

from candidates.resampler.mamba import MambaMixer as CandidateMixer
from harness import Call, Pair, register

__all__ = ["reference_mixer", "candidate_mixer", "convert_mixer", "float_keeps_float64", "reference_call"]

# The pure-PyTorch helpers upstream's forward calls; optional packages would replace them.
_TORCH_HELPERS = ("causal_conv1d_fn", "mamba_selective_scan", "mamba_inner_fn")
_KERNEL_PACKAGES = ("mamba_ssm", "causal_conv1d", "mambapy")


def _check_pure_torch_path() -> None:
    """Raise if upstream would run a compiled kernel instead of its PyTorch code."""
    installed = [name for name in _KERNEL_PACKAGES if importlib.util.find_spec(name) is not None]
    if installed:
        raise RuntimeError(f"the mamba reference must run upstream's pure-PyTorch path, but {installed} are installed")
    for name in _TORCH_HELPERS:
        helper = getattr(modeling_mamba, name)
        cells = dict(zip(helper.__code__.co_freevars, helper.__closure__ or ()))
        if "implementation" in cells and cells["implementation"].cell_contents is not helper.__wrapped__:
            raise RuntimeError(f"transformers resolved {name} to a kernel ({cells['implementation'].cell_contents!r})")


def reference_mixer(
    hidden_size: int, *, intermediate_size: int, state_size: int, conv_kernel: int, time_step_rank: int
) -> nn.Module:
    """transformers' MambaMixer, eval mode, sequential scan (no mambapy, no associative scan)."""
    _check_pure_torch_path()
    config = MambaConfig(
        hidden_size=hidden_size,
        state_size=state_size,
        conv_kernel=conv_kernel,
        time_step_rank=time_step_rank,
        num_hidden_layers=1,
        use_bias=False,
        use_conv_bias=True,
        hidden_act="silu",
        use_mambapy=False,
        use_associative_scan=False,
    )
    # MambaConfig.expand must be an int; upstream derives intermediate_size = int(expand * hidden).
    # Setting it directly gives non-integer ratios such as the seed's 1024 * 1.75 = 1792.
    config.intermediate_size = intermediate_size
    return modeling_mamba.MambaMixer(config, layer_idx=0).eval()


def candidate_mixer(
    hidden_size: int, *, intermediate_size: int, state_size: int, conv_kernel: int, time_step_rank: int
) -> CandidateMixer:
    return CandidateMixer(
        hidden_size, d_inner=intermediate_size, d_state=state_size, d_conv=conv_kernel, dt_rank=time_step_rank
    )


def convert_mixer(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference state dict -> candidate state dict: the names are the same."""
    return dict(state)


@contextlib.contextmanager
def float_keeps_float64() -> Iterator[None]:
    """Inside the block, ``Tensor.float()`` returns float64 tensors unchanged (see module docstring)."""
    original = torch.Tensor.float

    def at_least_float32(self: torch.Tensor, memory_format: torch.memory_format = torch.preserve_format) -> torch.Tensor:
        if self.dtype == torch.float64:
            return self
        return original(self, memory_format=memory_format)

    torch.Tensor.float = at_least_float32
    try:
        yield
    finally:
        torch.Tensor.float = original


def reference_call(model: nn.Module, call: Call) -> Any:
    with float_keeps_float64():
        return call(model)


def _mixer_pair(name: str, sizes: dict[str, int], shape: tuple[int, int, int], **extra: Any) -> Pair:
    return Pair(
        name=name,
        candidate=lambda: candidate_mixer(**sizes),
        reference=lambda: reference_mixer(**sizes),
        convert=convert_mixer,
        make_inputs=lambda g: torch.randn(*shape, generator=g),
        reference_call=reference_call,
        **extra,
    )


# Small enough for the default suite; an odd length (33) so no power-of-two shortcut hides a bug.
MIXER_SIZES = dict(hidden_size=64, intermediate_size=128, state_size=16, conv_kernel=4, time_step_rank=4)
# The seed's trained widths: 1024 * 1.75 = 1792 inner channels, d_state 64, d_conv 4.
BIMAMBA_SIZES = dict(hidden_size=1024, intermediate_size=1792, state_size=64, conv_kernel=4, time_step_rank=64)

register(_mixer_pair(
    "mamba_mixer", MIXER_SIZES, (2, 33, 64),
    description="selective-scan mixer vs transformers MambaMixer (pure PyTorch), hidden 64",
))
register(_mixer_pair(
    "mamba_mixer_bimamba", BIMAMBA_SIZES, (1, 64, 1024),
    tags=frozenset({"nightly"}),
    description="selective-scan mixer vs transformers MambaMixer at the bimamba preset widths (1024 x 1.75)",
))
