"""Our selective-scan mixer on its own: the scan against the literal recurrence, causality, init, validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from candidates.resampler.mamba import CausalConv1d, MambaMixer, SelectiveScan, selective_scan


# --- the scan itself ----------------------------------------------------------------------------


def selective_scan_literal(x, dt, A, B, C):
    """The S6 recurrence written literally, one token and one formula at a time: the test oracle.

    Channel-major like the kernel: ``x``, ``dt`` ``(batch, d_inner, length)``, ``B``, ``C`` ``(batch, d_state, length)``.
    """
    batch, d_inner, length = x.shape
    state = x.new_zeros(batch, d_inner, A.shape[-1])
    outputs = []
    for t in range(length):
        state = torch.exp(dt[:, :, t, None] * A) * state + dt[:, :, t, None] * B[:, None, :, t] * x[:, :, t, None]
        outputs.append((state * C[:, None, :, t]).sum(-1))
    return torch.stack(outputs, dim=-1)


def _scan_inputs(seed, batch, length, d_inner, d_state):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d_inner, length, generator=g, dtype=torch.float64)
    dt = torch.randn(batch, d_inner, length, generator=g, dtype=torch.float64)
    A = -torch.rand(d_inner, d_state, generator=g, dtype=torch.float64) * 3
    B, C = (torch.randn(batch, d_state, length, generator=g, dtype=torch.float64) for _ in range(2))
    return x, dt, A, B, C, g


@pytest.mark.property
@settings(deadline=None)
@given(
    batch=st.integers(1, 2), length=st.integers(1, 12), d_inner=st.integers(1, 6),
    d_state=st.integers(1, 5), seed=st.integers(0, 2**31 - 1),
)
def test_selective_scan_equals_literal_recurrence(batch, length, d_inner, d_state, seed):
    x, dt, A, B, C, _ = _scan_inputs(seed, batch, length, d_inner, d_state)
    dt = F.softplus(dt)
    fast, literal = selective_scan(x, dt, A, B, C), selective_scan_literal(x, dt, A, B, C)
    torch.testing.assert_close(fast, literal, atol=1e-13, rtol=1e-12)


def test_scan_module_discretizes_skips_and_gates():
    """SelectiveScan = softplus(delta + bias) -> recurrence -> + D * u -> * silu(z), each option on its own."""
    x, dt, A, B, C, g = _scan_inputs(5, 2, 7, 4, 3)
    D, bias = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    z = torch.randn_like(x)
    scan = SelectiveScan()
    step = F.softplus(dt + bias[:, None])
    expected = (selective_scan_literal(x, step, A, B, C) + D[:, None] * x) * F.silu(z)
    got = scan(x, dt, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True)
    torch.testing.assert_close(got, expected, atol=1e-13, rtol=1e-12)
    torch.testing.assert_close(scan(x, step, A, B, C), selective_scan_literal(x, step, A, B, C), atol=1e-13, rtol=1e-12)


def test_scan_module_runs_half_precision_in_float32():
    x, dt, A, B, C, _ = _scan_inputs(6, 1, 5, 3, 2)
    dt = F.softplus(dt)
    half = SelectiveScan()(*(t.bfloat16() for t in (x, dt)), A.float(), B.bfloat16(), C.bfloat16())
    assert half.dtype == torch.bfloat16
    exact = selective_scan_literal(*(t.bfloat16().double() for t in (x, dt)), A, B.bfloat16().double(), C.bfloat16().double())
    torch.testing.assert_close(half.double(), exact, atol=2e-2, rtol=2e-2)


def test_causal_conv_equals_left_padded_conv():
    """Cutting the symmetric padding back to the input length is a conv over the left-padded input."""
    conv = CausalConv1d(5, 3).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    expected = F.conv1d(F.pad(x, (2, 0)), conv.weight, conv.bias, groups=5)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), expected, atol=1e-15, rtol=0)
    assert conv.weight.shape == (5, 1, 3) and conv(x).shape == x.shape


@pytest.mark.property
@settings(deadline=None)
@given(length=st.integers(2, 10), position=st.data(), seed=st.integers(0, 2**31 - 1))
def test_mixer_is_causal(length, position, seed):
    """Changing token k changes outputs at k and later, never before (conv and scan are causal)."""
    torch.manual_seed(seed)
    mixer = MambaMixer(8, d_inner=12, d_state=3, d_conv=3).double().eval()
    k = position.draw(st.integers(0, length - 1))
    x = torch.randn(1, length, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[:, k] += 1.0
    with torch.no_grad():
        delta = (mixer(x2) - mixer(x)).abs().amax(-1)[0]
    assert torch.all(delta[:k] == 0)
    assert torch.all(delta[k:] > 0)


def test_mixer_gradients_flow_to_every_parameter():
    mixer = MambaMixer(8, d_inner=16, d_state=4)
    mixer(torch.randn(2, 5, 8)).square().sum().backward()
    missing = [n for n, p in mixer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_mixer_rejects_wrong_width_and_bad_sizes():
    mixer = MambaMixer(8, d_inner=16)
    with pytest.raises(ValueError, match=r"expects \(batch, length, 8\), got \(2, 5, 7\)"):
        mixer(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="MambaMixer.d_state must be an int >= 1, got 0"):
        MambaMixer(8, d_inner=16, d_state=0)
    with pytest.raises(TypeError, match=r"MambaMixer.dt_rank must be an int >= 1, got float 1.5; pass None for the automatic"):
        MambaMixer(8, d_inner=16, dt_rank=1.5)


def test_mixer_init_matches_upstream_s4d_scheme():
    mixer = MambaMixer(16, d_inner=32, d_state=4)
    assert torch.equal(-torch.exp(mixer.A_log[0]), -torch.arange(1.0, 5.0))
    assert torch.equal(mixer.D, torch.ones(32))
    step = F.softplus(mixer.dt_proj.bias)
    assert step.min() >= 1e-3 * (1 - 1e-5) and step.max() <= 1e-1 * (1 + 1e-5)
