"""The resampler family's reference side: transformers' ``MambaMixer``, the ``mamba_mixer`` pairs, ``add-metadata``.

Upstream: ``transformers.models.mamba.modeling_mamba.MambaMixer`` (transformers 5.23.0).
Candidate: :class:`candidates.resampler.mamba.MambaMixer`; the weights move through
:data:`candidates.resampler.convert.MIXER_TABLE` (the same names, so every row is an identity).
The BiMamba resampler around the mixer has no upstream twin; its checkpoints get their metadata
from the ``add-metadata`` command at the end of this module.

Probes, so that every step is traced. Upstream's pure path calls ``in_proj``, ``x_proj`` and
``out_proj`` as modules but runs the causal conv (with its activation) and the selective scan
(step bias, softplus, recurrence, ``D`` skip, gate) as module-level functions,
``causal_conv1d_fn`` and ``mamba_selective_scan``, which a hook-based trace cannot see.
:func:`instrument` changes one reference *instance*, never transformers' code or classes:

* its ``conv1d`` becomes :class:`UpstreamCausalConv1d`, an ``nn.Conv1d`` whose forward calls
  upstream's ``causal_conv1d_fn`` with its own weights and no activation;
* its ``act`` (upstream's own activation module) applies the activation that upstream's helper
  would have applied (``ACT2FN[activation]``, the same class);
* a parameter-free submodule ``scan`` (:class:`UpstreamSelectiveScan`) calls upstream's
  ``mamba_selective_scan`` with the arguments it is given;
* its ``forward`` runs upstream's forward function itself (same code object, the
  ``force_accelerate_hooks`` wrapper left out: it only acts on accelerate-offloaded models)
  with a copy of its module globals in which the two helper names route to the probes of the
  mixer that is running (a context variable, so threads and copies keep to their own).

The probed reference computes exactly what the plain one does (tested bitwise in float32 and
float64) and its trace has rows ``in_proj``, ``conv1d``, ``act``, ``x_proj``, ``scan``,
``out_proj`` with the candidate's names and argument structure. ``dt_proj`` has no call on
either side: upstream uses its weight in the forward body and hands its bias to the scan.

Precision: upstream calls ``.float()`` on ``A_log``, ``D``, the step bias, ``B`` and the scan
input, meaning "at least float32" for half-precision runs. On a float64 run that rounds those
tensors to float32 and caps the reference at ~4e-8 absolute error, so a float64 comparison
could not tell a bug from rounding. :func:`float_keeps_float64` is a
:class:`~torch.overrides.TorchFunctionMode` under which ``Tensor.float()`` leaves float64
tensors alone; for every other dtype it is exactly ``Tensor.float()`` (tested bitwise), so
float32 runs are untouched. A torch function mode lives on the current thread's mode stack:
nothing global is patched, and reference runs in other threads are unaffected (tested).

``python -m harness add-metadata CKPT`` gives a legacy resampler checkpoint its metadata: it finds
the resampler's keys (``--prefix``, or the only prefix followed by ``input_proj.weight``, as in a
Lightning ``.ckpt`` holding ``resampler_module.resampler.*``), infers the configuration from the
weight shapes, fills the fields the weights cannot tell (``norm_eps``, ``preset``) from
``--preset`` or the library defaults, prints where every field and the prefix came from, and
writes ``CKPT``'s ``.metadata.json`` atomically (:func:`candidates.resampler.checkpoint.write_metadata`).
Exit 0 on success, 2 on a bad file (the harness CLI prints the error).
"""

from __future__ import annotations

import argparse
import contextvars
import functools
import importlib.util
import inspect
import types
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from candidates.resampler.checkpoint import write_metadata
from candidates.resampler.convert import MIXER_TABLE
from candidates.resampler.mamba import MambaMixer as CandidateMixer
from candidates.resampler.resampler import VARIANTS, ResamplerConfig
from harness import Call, Pair, register
from harness.cli import register_command

__all__ = [
    "UpstreamCausalConv1d", "UpstreamSelectiveScan", "candidate_mixer", "float_keeps_float64", "instrument",
    "reference_call", "reference_mixer",
]

# The pure-PyTorch helpers upstream's forward calls; optional packages would replace them.
_TORCH_HELPERS = ("causal_conv1d_fn", "mamba_selective_scan", "mamba_inner_fn")
_KERNEL_PACKAGES = ("mamba_ssm", "causal_conv1d", "mambapy")


def _check_pure_torch_path() -> None:
    """Raise if upstream would run a compiled kernel instead of its PyTorch code."""
    installed = [name for name in _KERNEL_PACKAGES if importlib.util.find_spec(name) is not None]
    if installed:
        raise RuntimeError(f"the mamba reference must run upstream's pure-PyTorch path, but {installed} are installed")
    for name in _TORCH_HELPERS:
        helper = getattr(_upstream(), name)
        cells = dict(zip(helper.__code__.co_freevars, helper.__closure__ or ()))
        if "implementation" in cells and cells["implementation"].cell_contents is not helper.__wrapped__:
            raise RuntimeError(f"transformers resolved {name} to a kernel ({cells['implementation'].cell_contents!r})")


# ---------------------------------------------------------------------------------------------
# Probes: upstream's functional steps as traceable modules
# ---------------------------------------------------------------------------------------------


class UpstreamCausalConv1d(nn.Conv1d):
    """Upstream's ``causal_conv1d_fn`` on this conv's weights, activation left to ``act``."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return _upstream().causal_conv1d_fn(hidden_states, self.weight.squeeze(1), self.bias, activation=None)


class UpstreamSelectiveScan(nn.Module):
    """Upstream's ``mamba_selective_scan``, given exactly the arguments :func:`_scan_step` hands in."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _upstream().mamba_selective_scan(*args, **kwargs)


# The instrumented mixer whose forward is running (per thread and nesting-safe).
_RUNNING: contextvars.ContextVar[nn.Module] = contextvars.ContextVar("instrumented MambaMixer")


def _conv_step(
    hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
    activation: str | None = None, **kwargs: Any,
) -> torch.Tensor:
    """Stands in for ``causal_conv1d_fn`` inside an instrumented forward: ``act(conv1d(x))``."""
    mixer = _RUNNING.get()
    if kwargs:
        raise ValueError(f"the instrumented mamba reference takes no extra conv arguments, got {sorted(kwargs)}")
    own_weights = weight.data_ptr() == mixer.conv1d.weight.data_ptr() and bias is mixer.conv1d.bias
    if not own_weights or activation != mixer.activation:
        raise ValueError("the instrumented mamba reference expects its own conv1d weights and activation")
    out = mixer.conv1d(hidden_states)
    return out if activation is None else mixer.act(out)


def _scan_step(
    hidden_states: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
    C: torch.Tensor, *, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None, delta_softplus: bool = False, return_last_state: bool = False,
    use_mambapy: bool = False, use_associative_scan: bool = False,
) -> torch.Tensor:
    """Stands in for ``mamba_selective_scan``: the ``scan`` probe, for the sequential full-sequence path."""
    if return_last_state or use_mambapy or use_associative_scan:
        raise ValueError(
            "the instrumented mamba reference runs the sequential scan without a cache; got "
            f"return_last_state={return_last_state}, use_mambapy={use_mambapy}, "
            f"use_associative_scan={use_associative_scan}"
        )
    return _RUNNING.get().scan(
        hidden_states, dt, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus
    )


@functools.cache
def _upstream() -> types.ModuleType:
    """transformers' mamba module, imported when a reference is first built: the ``add-metadata``
    command in this module needs no model library."""
    from transformers.models.mamba import modeling_mamba

    return modeling_mamba


@functools.cache
def _forward_with_probes() -> types.FunctionType:
    """Upstream's forward, same code object, reading the two helper names from a copy of its globals."""
    upstream = inspect.unwrap(_upstream().MambaMixer.forward)
    forward = types.FunctionType(
        upstream.__code__,
        {**upstream.__globals__, "causal_conv1d_fn": _conv_step, "mamba_selective_scan": _scan_step},
        upstream.__name__, upstream.__defaults__, upstream.__closure__,
    )
    forward.__kwdefaults__ = upstream.__kwdefaults__
    return forward


def _probed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
    token = _RUNNING.set(self)
    try:
        return _forward_with_probes()(self, *args, **kwargs)
    finally:
        _RUNNING.reset(token)


def instrument(mixer: nn.Module) -> nn.Module:
    """Give this reference instance its probes (see module docstring); returns it."""
    if type(mixer) is not _upstream().MambaMixer:
        raise TypeError(f"instrument takes a transformers MambaMixer, got {type(mixer).__name__}")
    if type(mixer.conv1d) is not nn.Conv1d:
        raise TypeError(f"expected upstream's nn.Conv1d as mixer.conv1d, got {type(mixer.conv1d).__name__}")
    mixer.conv1d.__class__ = UpstreamCausalConv1d  # same parameters, a forward that calls upstream's helper
    mixer.scan = UpstreamSelectiveScan()
    mixer.forward = types.MethodType(_probed_forward, mixer)  # deepcopy rebinds it to the copy
    return mixer


# ---------------------------------------------------------------------------------------------
# Models, conversion, precision
# ---------------------------------------------------------------------------------------------


def reference_mixer(
    hidden_size: int, *, intermediate_size: int, state_size: int, conv_kernel: int, time_step_rank: int,
    probes: bool = True,
) -> nn.Module:
    """transformers' MambaMixer, eval mode, sequential scan (no mambapy, no associative scan).

    ``probes=True`` (default) instruments it (see :func:`instrument`); ``False`` gives it plain.
    """
    _check_pure_torch_path()
    config = _upstream().MambaConfig(
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
    # Setting it directly gives non-integer ratios such as 1024 * 1.75 = 1792.
    config.intermediate_size = intermediate_size
    mixer = _upstream().MambaMixer(config, layer_idx=0).eval()
    return instrument(mixer) if probes else mixer


def candidate_mixer(
    hidden_size: int, *, intermediate_size: int, state_size: int, conv_kernel: int, time_step_rank: int
) -> CandidateMixer:
    return CandidateMixer(
        hidden_size, d_inner=intermediate_size, d_state=state_size, d_conv=conv_kernel, dt_rank=time_step_rank
    )


class _FloatKeepsFloat64(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is torch.Tensor.float and args and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.float64:
            return args[0]
        return func(*args, **(kwargs or {}))


def float_keeps_float64() -> TorchFunctionMode:
    """``with float_keeps_float64():`` on this thread, ``Tensor.float()`` returns float64 tensors unchanged."""
    return _FloatKeepsFloat64()


def reference_call(model: nn.Module, call: Call) -> Any:
    with float_keeps_float64():
        return call(model)


def _mixer_pair(name: str, sizes: dict[str, int], shape: tuple[int, int, int], **extra: Any) -> Pair:
    return Pair(
        name=name,
        candidate=lambda: candidate_mixer(**sizes),
        reference=lambda: reference_mixer(**sizes),
        convert=MIXER_TABLE.to_candidate,
        make_inputs=lambda g: torch.randn(*shape, generator=g),
        reference_call=reference_call,
        **extra,
    )


# Small enough for the default suite; an odd length (33) so no power-of-two shortcut hides a bug.
MIXER_SIZES = dict(hidden_size=64, intermediate_size=128, state_size=16, conv_kernel=4, time_step_rank=4)
# The trained widths of the bimamba variant: 1024 * 1.75 = 1792 inner channels, d_state 64, d_conv 4.
_BIMAMBA = VARIANTS["bimamba"]
BIMAMBA_SIZES = dict(hidden_size=_BIMAMBA.hidden_dim, intermediate_size=_BIMAMBA.d_inner, state_size=_BIMAMBA.d_state,
                     conv_kernel=_BIMAMBA.d_conv, time_step_rank=_BIMAMBA.dt_rank)

register(_mixer_pair(
    "mamba_mixer", MIXER_SIZES, (2, 33, 64),
    description="selective-scan mixer vs transformers MambaMixer (pure PyTorch), hidden 64",
))
register(_mixer_pair(
    "mamba_mixer_bimamba", BIMAMBA_SIZES, (1, 64, 1024),
    tags=frozenset({"nightly"}),
    description="selective-scan mixer vs transformers MambaMixer at the bimamba preset widths (1024 x 1.75)",
))


# ---------------------------------------------------------------------------------------------
# add-metadata
# ---------------------------------------------------------------------------------------------


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="weights file: .safetensors, or .pth/.pt/.ckpt (read weights-only)")
    parser.add_argument(
        "--preset", choices=sorted(VARIANTS), default=None,
        help="defaults for the fields the weights cannot tell (default: ResamplerConfig())",
    )
    parser.add_argument(
        "--prefix", default=None,
        help="key prefix of the resampler inside the file, e.g. resampler_module.resampler. "
             "(default: the only prefix followed by input_proj.weight)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing metadata")


def _run(args: argparse.Namespace) -> int:
    defaults = ResamplerConfig.from_preset(args.preset) if args.preset else ResamplerConfig()
    path, config, sources, prefix = write_metadata(
        args.checkpoint, defaults=defaults, force=args.force, prefix=args.prefix
    )
    print(f"{'prefix':<10} = {prefix}")
    for name in ResamplerConfig.field_names():
        print(f"{name:<10} = {getattr(config, name)!r:<12} <- {sources[name]}")
    print(f"metadata written to {path}")
    return 0


register_command(
    "add-metadata",
    help="write the metadata JSON (full config, versions, weights hash) for a resampler checkpoint",
    add_arguments=_add_arguments,
    run=_run,
)
