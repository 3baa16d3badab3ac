"""Our selective-scan mixer against transformers' MambaMixer: parity, scan properties, localization, speed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import harness
from candidates.resampler.mamba import MambaMixer, selective_scan
from reference.mamba import (
    MIXER_SIZES, candidate_mixer, convert_mixer, float_keeps_float64, reference_call, reference_mixer,
)

ROOT = "<root>"
# Upstream uses conv1d, act and dt_proj only through their weights (functional helpers).
UNMATCHED_CANDIDATE = ["conv1d#0", "act#0", "dt_proj#0"]


# --- parity ---------------------------------------------------------------------------------


@pytest.mark.parity
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_mamba_mixer_parity(parity_check, dtype):
    report = parity_check("mamba_mixer", dtype=dtype)
    assert [r.key for r in report.rows] == ["in_proj#0", "x_proj#0", "out_proj#0", f"{ROOT}#0"]
    assert report.unmatched_candidate == UNMATCHED_CANDIDATE
    assert report.unmatched_reference == []
    if dtype == torch.float64:
        assert report.output.max_abs <= 1e-10


@pytest.mark.parity
@pytest.mark.nightly
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_mamba_mixer_bimamba_widths_parity(parity_check, dtype):
    parity_check("mamba_mixer_bimamba", dtype=dtype)


def test_upstream_rounds_float64_to_float32_without_the_precision_shim():
    """Why reference_call wraps upstream in float_keeps_float64: without it fp64 parity is impossible."""
    candidate, reference = harness.get_pair("mamba_mixer").build(dtype=torch.float64)
    x = harness.get_pair("mamba_mixer").inputs(dtype=torch.float64).args[0]
    with torch.no_grad():
        ours = candidate(x)
        raw = reference(x)
        shimmed = reference_call(reference, harness.Call((x,)))
    assert (ours - shimmed).abs().max() <= 1e-13
    assert (ours - raw).abs().max() > 1e-9  # float32 rounding inside upstream's scan


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_precision_shim_is_bitwise_noop_below_float64(dtype):
    _, reference = harness.get_pair("mamba_mixer").build(dtype=dtype)
    x = harness.get_pair("mamba_mixer").inputs(dtype=dtype).args[0]
    with torch.no_grad():
        plain = reference(x)
        with float_keeps_float64():
            shimmed = reference(x)
    assert torch.equal(plain, shimmed)
    assert torch.ones(2, dtype=torch.float64).float().dtype == torch.float32  # restored on exit


def test_convert_is_identity_and_loads_strictly():
    reference = reference_mixer(**MIXER_SIZES)
    state = reference.state_dict()
    converted = convert_mixer(state)
    assert converted.keys() == state.keys() and all(converted[k] is state[k] for k in state)
    candidate_mixer(**MIXER_SIZES).load_state_dict(converted, strict=True)


def test_reference_runs_pure_torch_helpers():
    from transformers.models.mamba import modeling_mamba

    reference = reference_mixer(**MIXER_SIZES)
    assert not reference.training and not reference.use_mambapy and not reference.use_associative_scan
    helper = modeling_mamba.mamba_selective_scan
    cells = dict(zip(helper.__code__.co_freevars, helper.__closure__))
    assert cells["implementation"].cell_contents is helper.__wrapped__


# --- localization of injected bugs ------------------------------------------------------------


class MixerWithoutSoftplus(MambaMixer):
    """The bug 'dt softplus removed': raw (possibly negative) step sizes reach the scan."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        length = hidden_states.shape[1]
        x, gate = self.in_proj(hidden_states).chunk(2, dim=-1)
        x = self.act(self.conv1d(x.transpose(1, 2))[..., :length]).transpose(1, 2)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = self.dt_proj(dt)  # BUG: no softplus
        y = selective_scan(x, dt, -torch.exp(self.A_log), B, C) + x * self.D
        return self.out_proj(y * F.silu(gate))


def _buggy(kind: str) -> torch.nn.Module:
    candidate, _ = harness.get_pair("mamba_mixer").build(dtype=torch.float64)
    with torch.no_grad():
        if kind == "no_softplus":
            candidate.__class__ = MixerWithoutSoftplus
        elif kind == "D_dropped":
            candidate.D.zero_()  # e.g. a conversion that forgot the skip parameter
        elif kind == "conv1d_bias":
            candidate.conv1d.bias[7] += 1e-6
        elif kind == "in_proj_weight":
            candidate.in_proj.weight[3, 5] += 1e-6
        elif kind == "out_proj_weight":
            candidate.out_proj.weight[0, 0] += 1e-6
    return candidate


@pytest.mark.parametrize(
    ("kind", "first_divergence", "culprit"),
    [
        ("no_softplus", "out_proj", ROOT),  # the scan code between x_proj and out_proj
        ("D_dropped", "out_proj", ROOT),
        ("conv1d_bias", "x_proj", ROOT),  # conv1d has no upstream twin: the mixer is as close as it gets
        ("in_proj_weight", "in_proj", "in_proj"),
        ("out_proj_weight", "out_proj", "out_proj"),
    ],
)
def test_injected_bug_is_localized(kind, first_divergence, culprit):
    report = harness.compare_pair("mamba_mixer", candidate=_buggy(kind), dtype=torch.float64)
    assert not report.passed
    assert (report.first_divergence, report.culprit) == (first_divergence, culprit), report.format()
    assert report.to_dict()["layers"][0]["passed"] == (kind not in ("in_proj_weight",))


# --- the scan itself ----------------------------------------------------------------------------


def selective_scan_literal(x, dt, A, B, C):
    """The S6 recurrence written literally, one token and one formula at a time: the test oracle."""
    batch, length, d_inner = x.shape
    state = x.new_zeros(batch, d_inner, A.shape[-1])
    outputs = []
    for t in range(length):
        state = torch.exp(dt[:, t, :, None] * A) * state + dt[:, t, :, None] * B[:, t, None, :] * x[:, t, :, None]
        outputs.append((state * C[:, t, None, :]).sum(-1))
    return torch.stack(outputs, dim=1)


@pytest.mark.property
@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 2), length=st.integers(1, 12), d_inner=st.integers(1, 6),
    d_state=st.integers(1, 5), seed=st.integers(0, 2**31 - 1),
)
def test_selective_scan_equals_literal_recurrence(batch, length, d_inner, d_state, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, d_inner, generator=g, dtype=torch.float64)
    dt = F.softplus(torch.randn(batch, length, d_inner, generator=g, dtype=torch.float64))
    A = -torch.rand(d_inner, d_state, generator=g, dtype=torch.float64) * 3
    B, C = (torch.randn(batch, length, d_state, generator=g, dtype=torch.float64) for _ in range(2))
    fast, literal = selective_scan(x, dt, A, B, C), selective_scan_literal(x, dt, A, B, C)
    torch.testing.assert_close(fast, literal, atol=1e-13, rtol=1e-12)


@pytest.mark.property
@settings(max_examples=15, deadline=None)
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
    with pytest.raises(ValueError, match="d_state must be a positive int, got 0"):
        MambaMixer(8, d_inner=16, d_state=0)
    with pytest.raises(ValueError, match=r"dt_rank must be a positive int or None \(auto\), got 1.5"):
        MambaMixer(8, d_inner=16, dt_rank=1.5)


def test_mixer_init_matches_upstream_s4d_scheme():
    mixer = MambaMixer(16, d_inner=32, d_state=4)
    assert torch.equal(-torch.exp(mixer.A_log[0]), -torch.arange(1.0, 5.0))
    assert torch.equal(mixer.D, torch.ones(32))
    step = F.softplus(mixer.dt_proj.bias)
    assert step.min() >= 1e-3 * (1 - 1e-5) and step.max() <= 1e-1 * (1 + 1e-5)


# --- speed ------------------------------------------------------------------------------------


@pytest.mark.bench
@pytest.mark.parametrize("side", ["candidate", "reference"])
def test_mamba_mixer_speed_seq1024(benchmark, side):
    """Candidate vs upstream pure-PyTorch mixer, float32, (1, 1024, 256), d_inner 512, d_state 16."""
    sizes = dict(hidden_size=256, intermediate_size=512, state_size=16, conv_kernel=4, time_step_rank=16)
    torch.manual_seed(0)
    model = (candidate_mixer if side == "candidate" else reference_mixer)(**sizes).eval()
    x = torch.randn(1, 1024, 256)
    benchmark.group = "mamba_mixer seq=1024"
    with torch.no_grad():
        out = benchmark(model, x)
    assert out.shape == (1, 1024, 256)
