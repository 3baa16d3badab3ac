"""Mamba selective-scan mixer, in plain PyTorch.

Paper: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023),
https://arxiv.org/abs/2312.00752, Algorithm 2 (S6).
Upstream twin: ``transformers.models.mamba.modeling_mamba.MambaMixer`` (its pure-PyTorch path);
submodule and parameter names follow it (``in_proj``, ``conv1d``, ``act``, ``x_proj``,
``dt_proj``, ``A_log``, ``D``, ``out_proj``) so a state dict moves over unchanged.

Every step with its own math is a module, so a parity trace localizes an error to it:
``in_proj``, ``conv1d`` (causal), ``act``, ``x_proj``, ``scan`` (:class:`SelectiveScan`),
``out_proj``. The steps are cut where upstream cuts them: upstream calls its functional helpers
``causal_conv1d_fn`` and ``mamba_selective_scan``, and ``SelectiveScan`` takes the arguments of
the latter (those of ``mamba_ssm``'s ``selective_scan_fn``): channel-major tensors, the step
bias ``delta_bias`` and the softplus applied inside the scan. ``dt_proj`` is therefore a
parameter holder as upstream (and the fused kernel) use it: its weight lifts the low-rank step
in the mixer body, its bias enters the scan.

Deliberate differences from the upstream pure-PyTorch path:

* The scan runs in the input dtype, promoted to at least float32. Upstream casts
  ``A``, ``D``, the step bias, ``B`` and the input to float32 with ``.float()``, which silently
  rounds a float64 run to float32 precision; ours stays float64 end to end.
* The recurrence is one fused ``addcmul`` per token, and the readout ``C_t . h_t`` is a single
  batched contraction after the loop (upstream does a matmul per token).
* No cache / single-token decoding path: the resampler always sees whole token sequences.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.checks import check_int

__all__ = ["CausalConv1d", "MambaMixer", "SelectiveScan", "selective_scan"]


def selective_scan(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """The S6 recurrence over the sequence, from a zero state (channel-major, as the kernel).

    ``h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t`` and ``y_t = C_t . h_t`` (per channel).

    Args:
        x, dt: ``(batch, d_inner, length)``; ``dt`` already positive (after softplus).
        A: ``(d_inner, d_state)``, negative.
        B, C: ``(batch, d_state, length)``.

    Returns:
        ``(batch, d_inner, length)``, in the dtype of ``x``.
    """
    dtype = x.dtype
    compute = torch.promote_types(dtype, torch.float32)  # half-precision runs scan in float32
    A = A.to(compute)
    # Time-major layout so that each step reads one contiguous slab.
    x, dt, B, C = (t.to(compute).permute(2, 0, 1) for t in (x, dt, B, C))  # (length, batch, ...)
    decay = torch.exp(dt.unsqueeze(-1) * A)  # (length, batch, d_inner, d_state)
    drive = (dt * x).unsqueeze(-1) * B.unsqueeze(-2)  # (length, batch, d_inner, d_state)
    state = torch.zeros_like(drive[0])
    states = []
    for decay_t, drive_t in zip(decay, drive):
        state = torch.addcmul(drive_t, decay_t, state)
        states.append(state)
    states = torch.stack(states)  # (length, batch, d_inner, d_state)
    y = torch.einsum("lben,lbn->bel", states, C)  # (batch, d_inner, length): C_t . h_t
    return y.to(dtype)


class SelectiveScan(nn.Module):
    """The selective-scan step of a mixer, with the interface of ``selective_scan_fn``.

    ``softplus(delta + delta_bias)`` discretizes the step, :func:`selective_scan` runs the
    recurrence, ``D * u`` adds the skip and ``silu(z)`` gates the result. Parameter-free: the
    mixer owns ``A_log``, ``D`` and the step bias and passes them in, as upstream does.
    """

    def forward(
        self,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        *,
        D: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
        delta_bias: torch.Tensor | None = None,
        delta_softplus: bool = False,
    ) -> torch.Tensor:
        """``u``, ``delta``, ``z``: ``(batch, d_inner, length)``; ``B``, ``C``: ``(batch, d_state, length)``."""
        if delta_bias is not None:
            delta = delta + delta_bias.to(delta.dtype)[:, None]
        if delta_softplus:
            delta = F.softplus(delta)  # positive step sizes
        y = selective_scan(u, delta, A, B, C)  # (batch, d_inner, length)
        if D is not None:
            y = y + u * D[:, None]
        if z is not None:
            y = y * F.silu(z)
        return y


class CausalConv1d(nn.Conv1d):
    """Depthwise conv over ``(batch, channels, length)`` in which token ``t`` sees tokens ``<= t`` only.

    Padded by ``kernel_size - 1`` on both sides, as upstream's ``nn.Conv1d``, and cut back to
    the input length: the cut drops the outputs that looked at right-hand padding. Parameters
    are those of the ``nn.Conv1d`` (``weight`` ``(channels, 1, kernel_size)``, ``bias``).
    """

    def __init__(self, channels: int, kernel_size: int, *, bias: bool = True) -> None:
        super().__init__(channels, channels, kernel_size, groups=channels, padding=kernel_size - 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[..., : x.shape[-1]]


class MambaMixer(nn.Module):
    """Gated selective state-space mixer over a token sequence ``(batch, length, hidden_dim)``.

    ``in_proj`` splits into a signal and a gate; the signal runs through the causal depthwise
    ``conv1d`` and ``act``; ``x_proj`` makes the input-dependent step ``dt`` (low rank, lifted
    by ``dt_proj``'s weight), ``B`` and ``C``; ``scan`` mixes tokens, adds the ``D`` skip and
    multiplies by the SiLU of the gate; ``out_proj`` maps back to ``hidden_dim``.
    """

    def __init__(
        self,
        hidden_dim: int,
        *,
        d_inner: int,
        d_state: int = 16,
        d_conv: int = 4,
        dt_rank: int | None = None,
        bias: bool = False,
        conv_bias: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("hidden_dim", hidden_dim), ("d_inner", d_inner), ("d_state", d_state), ("d_conv", d_conv)):
            check_int(f"MambaMixer.{name}", value, minimum=1)
        if dt_rank is None:
            dt_rank = math.ceil(hidden_dim / 16)  # upstream's automatic rank
        check_int("MambaMixer.dt_rank", dt_rank, minimum=1, fix="pass None for the automatic ceil(hidden_dim / 16)")
        self.hidden_dim, self.d_inner, self.d_state, self.d_conv, self.dt_rank = (
            hidden_dim, d_inner, d_state, d_conv, dt_rank
        )
        self.in_proj = nn.Linear(hidden_dim, 2 * d_inner, bias=bias)
        self.conv1d = CausalConv1d(d_inner, d_conv, bias=conv_bias)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        self.out_proj = nn.Linear(d_inner, hidden_dim, bias=bias)
        self.scan = SelectiveScan()
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, *, dt_min: float = 1e-3, dt_max: float = 1e-1) -> None:
        """S4D-real ``A = -(1..d_state)``, unit skip ``D``, and step sizes log-uniform in [dt_min, dt_max]."""
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(self.A_log))
        self.D.fill_(1.0)
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != self.hidden_dim:
            raise ValueError(
                f"MambaMixer expects (batch, length, {self.hidden_dim}), got {tuple(hidden_states.shape)}"
            )
        x, gate = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)  # (batch, d_inner, length) each
        x = self.act(self.conv1d(x))  # (batch, d_inner, length)
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = self.dt_proj.weight @ dt.transpose(1, 2)  # (batch, d_inner, length); bias and softplus in the scan
        A = -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))  # negative: modes decay
        y = self.scan(
            x, dt, A, B.transpose(1, 2), C.transpose(1, 2),  # B, C: (batch, d_state, length)
            D=self.D, z=gate, delta_bias=self.dt_proj.bias, delta_softplus=True,
        )  # (batch, d_inner, length)
        return self.out_proj(y.transpose(1, 2))  # (batch, length, hidden_dim)

    def extra_repr(self) -> str:
        return f"d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, dt_rank={self.dt_rank}"
