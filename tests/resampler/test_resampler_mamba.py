"""Our selective-scan mixer against transformers' MambaMixer: parity, scan properties, localization, speed."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers.models.mamba import modeling_mamba

import harness
from candidates.resampler.mamba import CausalConv1d, MambaMixer, SelectiveScan, selective_scan
from reference.mamba import (
    MIXER_SIZES, UpstreamCausalConv1d, UpstreamSelectiveScan, _scan_step, candidate_mixer, convert_mixer,
    float_keeps_float64, instrument, reference_call, reference_mixer,
)

ROOT = "<root>"
EVERY_STEP = ["in_proj#0", "conv1d#0", "act#0", "x_proj#0", "scan#0", "out_proj#0", f"{ROOT}#0"]


# --- parity ---------------------------------------------------------------------------------


@pytest.mark.parity
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_mamba_mixer_parity(parity_check, dtype):
    report = parity_check("mamba_mixer", dtype=dtype)
    assert [r.key for r in report.rows] == EVERY_STEP
    assert all(r.match.how == "name" for r in report.rows)
    assert report.unmatched_candidate == [] and report.unmatched_reference == []
    if dtype == torch.float64:
        assert report.output.max_abs <= 1e-10


@pytest.mark.parity
@pytest.mark.nightly
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_mamba_mixer_bimamba_widths_parity(parity_check, dtype):
    report = parity_check("mamba_mixer_bimamba", dtype=dtype)
    assert [r.key for r in report.rows] == EVERY_STEP


def _plain_and_probed(dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """The upstream mixer as it comes and an instrumented copy with the same weights."""
    plain = reference_mixer(**MIXER_SIZES, probes=False)
    probed = reference_mixer(**MIXER_SIZES)
    harness.randomize_(plain, torch.Generator().manual_seed(3))
    probed.load_state_dict(plain.state_dict(), strict=True)
    return plain.to(dtype), probed.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_probes_compute_exactly_what_upstream_computes(dtype):
    plain, probed = _plain_and_probed(dtype)
    x = torch.randn(2, 9, MIXER_SIZES["hidden_size"], dtype=dtype, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), float_keeps_float64():
        expected, got = plain(x), probed(x)
    assert torch.equal(expected, got)


def test_probes_change_one_instance_not_transformers():
    probed = reference_mixer(**MIXER_SIZES)
    plain = reference_mixer(**MIXER_SIZES, probes=False)
    assert type(probed) is modeling_mamba.MambaMixer and type(probed.conv1d) is UpstreamCausalConv1d
    assert isinstance(probed.scan, UpstreamSelectiveScan)
    assert type(plain.conv1d) is nn.Conv1d and not hasattr(plain, "scan") and "forward" not in vars(plain)
    helper = modeling_mamba.causal_conv1d_fn
    assert helper.__wrapped__.__module__ == modeling_mamba.__name__  # the module's helper is untouched
    assert probed.state_dict().keys() == plain.state_dict().keys()


def test_a_copy_of_a_probed_reference_runs_its_own_probes():
    probed = reference_mixer(**MIXER_SIZES).double()
    clone = copy.deepcopy(probed)
    x = torch.randn(1, 5, MIXER_SIZES["hidden_size"], dtype=torch.float64)
    with torch.no_grad():
        before = probed(x)
        assert torch.equal(clone(x), before)
        clone.conv1d.bias.add_(1.0)
        clone.D.add_(1.0)
        assert not torch.equal(clone(x), before) and torch.equal(probed(x), before)
    with harness.Tracer(clone) as trace, torch.no_grad():
        clone(x)
    assert [r.key for r in trace.records] == EVERY_STEP


def test_instrument_refuses_what_it_cannot_probe():
    with pytest.raises(TypeError, match="instrument takes a transformers MambaMixer, got MambaMixer"):
        instrument(candidate_mixer(**MIXER_SIZES))
    with pytest.raises(TypeError, match="expected upstream's nn.Conv1d as mixer.conv1d, got UpstreamCausalConv1d"):
        instrument(reference_mixer(**MIXER_SIZES))  # already instrumented
    probed = reference_mixer(**MIXER_SIZES)
    x = torch.randn(1, 4, MIXER_SIZES["intermediate_size"])
    with pytest.raises(ValueError, match="sequential scan without a cache; got return_last_state=True"):
        _scan_step(x, x, torch.zeros(MIXER_SIZES["intermediate_size"], 16), x[:, :16], x[:, :16],
                   return_last_state=True)


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
    assert torch.ones(2, dtype=torch.float64).float().dtype == torch.float32  # gone on exit


def test_precision_shim_is_confined_to_its_thread():
    """The shim is a torch function mode (a per-thread stack): another thread keeps Tensor.float()."""
    inside, checked = threading.Event(), threading.Event()
    seen = {}

    def other_thread():
        inside.wait(timeout=10)
        seen["other"] = torch.ones(2, dtype=torch.float64).float().dtype
        checked.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with float_keeps_float64():
        inside.set()
        checked.wait(timeout=10)
        seen["inside"] = torch.ones(2, dtype=torch.float64).float().dtype
    worker.join()
    assert seen == {"other": torch.float32, "inside": torch.float64}


def test_concurrent_reference_runs_match_serial_ones():
    """Shimmed and raw float64 reference runs in parallel threads give their serial results bitwise."""
    _, reference = harness.get_pair("mamba_mixer").build(dtype=torch.float64)
    x = harness.get_pair("mamba_mixer").inputs(dtype=torch.float64).args[0]
    runs = {"shimmed": lambda: reference_call(reference, harness.Call((x,))), "raw": lambda: reference(x)}
    with torch.no_grad():
        serial = {name: run() for name, run in runs.items()}
    results: dict[str, list[torch.Tensor]] = {name: [] for name in runs}

    def repeat(name: str) -> None:
        with torch.no_grad():
            for _ in range(3):
                results[name].append(runs[name]())

    threads = [threading.Thread(target=repeat, args=(name,)) for name in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not torch.equal(serial["shimmed"], serial["raw"])
    for name in runs:
        assert len(results[name]) == 3 and all(torch.equal(r, serial[name]) for r in results[name]), name


def test_convert_is_identity_and_loads_strictly():
    reference = reference_mixer(**MIXER_SIZES)
    state = reference.state_dict()
    converted = convert_mixer(state)
    assert converted.keys() == state.keys() and all(converted[k] is state[k] for k in state)
    candidate_mixer(**MIXER_SIZES).load_state_dict(converted, strict=True)


def test_reference_runs_pure_torch_helpers():
    reference = reference_mixer(**MIXER_SIZES)
    assert not reference.training and not reference.use_mambapy and not reference.use_associative_scan
    helper = modeling_mamba.mamba_selective_scan
    cells = dict(zip(helper.__code__.co_freevars, helper.__closure__))
    assert cells["implementation"].cell_contents is helper.__wrapped__


# --- localization of injected bugs ------------------------------------------------------------


class ScanWithoutSoftplus(SelectiveScan):
    """The bug 'dt softplus removed': raw (possibly negative) step sizes reach the recurrence."""

    def forward(self, u, delta, A, B, C, *, D=None, z=None, delta_bias=None, delta_softplus=False):
        return super().forward(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=False)


class ScanWithoutSkip(SelectiveScan):
    """The bug 'D skip dropped': the scan forgets ``+ D * u``."""

    def forward(self, u, delta, A, B, C, *, D=None, z=None, delta_bias=None, delta_softplus=False):
        return super().forward(u, delta, A, B, C, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)


def _buggy(kind: str) -> torch.nn.Module:
    candidate, _ = harness.get_pair("mamba_mixer").build(dtype=torch.float64)
    with torch.no_grad():
        if kind == "no_softplus":
            candidate.scan = ScanWithoutSoftplus()
        elif kind == "skip_dropped":
            candidate.scan = ScanWithoutSkip()
        elif kind == "act_gelu":
            candidate.act = nn.GELU()
        elif kind == "D_zeroed":
            candidate.D.zero_()  # e.g. a conversion that forgot the skip parameter
        elif kind == "dt_bias":
            candidate.dt_proj.bias[2] += 1e-6
        elif kind == "conv1d_bias":
            candidate.conv1d.bias[7] += 1e-6
        elif kind == "in_proj_weight":
            candidate.in_proj.weight[3, 5] += 1e-6
        elif kind == "out_proj_weight":
            candidate.out_proj.weight[0, 0] += 1e-6
        else:
            raise AssertionError(kind)
    return candidate


@pytest.mark.parametrize(
    ("kind", "first_divergence", "culprit"),
    [
        ("no_softplus", "scan", "scan"),
        ("skip_dropped", "scan", "scan"),
        ("act_gelu", "act", "act"),
        ("conv1d_bias", "conv1d", "conv1d"),
        ("in_proj_weight", "in_proj", "in_proj"),
        ("out_proj_weight", "out_proj", "out_proj"),
        # Parameters the mixer owns and hands to the scan: the scan re-run on the reference's
        # inputs passes, so the error is the mixer's own (as upstream, D and the step bias are
        # the mixer's parameters, not the scan's).
        ("D_zeroed", "scan", ROOT),
        ("dt_bias", "scan", ROOT),
    ],
)
def test_injected_bug_is_localized(kind, first_divergence, culprit):
    report = harness.compare_pair("mamba_mixer", candidate=_buggy(kind), dtype=torch.float64)
    assert not report.passed
    assert (report.first_divergence, report.culprit) == (first_divergence, culprit), report.format()
    statuses = {r.key: r.status for r in report.rows}
    assert statuses[f"{culprit}#0"] == "introduced"
    assert [k for k, s in statuses.items() if s == "introduced"] == [f"{culprit}#0"]
    assert report.to_dict()["layers"][0]["passed"] == (kind != "in_proj_weight")


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
    build = candidate_mixer if side == "candidate" else lambda **kw: reference_mixer(**kw, probes=False)
    model = build(**sizes).eval()
    x = torch.randn(1, 1024, 256)
    benchmark.group = "mamba_mixer seq=1024"
    with torch.no_grad():
        out = benchmark(model, x)
    assert out.shape == (1, 1024, 256)
