"""The resampler family's reference side: the mamba_mixer pairs, the probed upstream mixer, add-metadata.

The pairs compare our selective-scan mixer with transformers' MambaMixer (parity, localization of
injected bugs, speed); the probes and the float64 shim must leave upstream's computation exactly as
it is; ``add-metadata`` makes a legacy checkpoint self-describing.
"""

from __future__ import annotations

import copy
import json
import threading

import pytest
import safetensors.torch
import torch
from helpers import PARITY_DTYPES
from resampler_toys import TINY, WRAPPER_PREFIX, lightning_ckpt, trained
from torch import nn
from transformers.models.mamba import modeling_mamba

import harness
from candidates.resampler.checkpoint import CheckpointError, load_checkpoint, metadata_path
from candidates.resampler.mamba import SelectiveScan
from candidates.resampler.resampler import ResamplerConfig
from harness.cli import main as harness_cli
from reference.resampler import (
    MIXER_SIZES, UpstreamCausalConv1d, UpstreamSelectiveScan, _scan_step, candidate_mixer, float_keeps_float64,
    instrument, reference_call, reference_mixer,
)

ROOT = "<root>"
EVERY_STEP = ["in_proj#0", "conv1d#0", "act#0", "x_proj#0", "scan#0", "out_proj#0", f"{ROOT}#0"]


# --- parity ---------------------------------------------------------------------------------


@pytest.mark.parity
@pytest.mark.parametrize("dtype", PARITY_DTYPES)
def test_mamba_mixer_parity(parity_check, dtype):
    report = parity_check("mamba_mixer", dtype=dtype)
    assert [r.key for r in report.rows] == EVERY_STEP
    assert all(r.match.how == "name" for r in report.rows)
    assert report.unmatched_candidate == [] and report.unmatched_reference == []
    if dtype == torch.float64:
        assert report.output.max_abs <= 1e-10


@pytest.mark.parity
@pytest.mark.nightly
@pytest.mark.parametrize("dtype", PARITY_DTYPES)
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


@pytest.mark.parametrize("dtype", PARITY_DTYPES)
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


# --- add-metadata ------------------------------------------------------------------------------


def test_add_metadata_command_makes_legacy_checkpoints_self_describing(tmp_path, capsys):
    path = tmp_path / "legacy.pth"
    torch.save(trained().state_dict(), path)
    assert harness_cli(["add-metadata", str(path), "--preset", "bimamba"]) == 0
    out = capsys.readouterr().out
    assert "hidden_dim = 8            <- weights (input_proj.weight (8, 6))" in out
    assert "preset     = 'bimamba'    <- defaults" in out
    document = json.loads(metadata_path(path).read_text())
    assert document["written_by"] == "add-metadata"
    assert document["config_sources"]["expand"].startswith("weights (blocks.0.forward_block.in_proj.weight (24, 8)")
    loaded = load_checkpoint(path)
    assert {str(s) for s in loaded.sources.values()} == {"metadata"}
    assert loaded.config == ResamplerConfig(**{**TINY.to_dict(), "preset": "bimamba"})

    assert harness_cli(["add-metadata", str(path)]) == 2  # existing metadata is kept...
    assert "already exists; pass force=True (--force)" in capsys.readouterr().err
    assert harness_cli(["add-metadata", str(path), "--force"]) == 0  # ...unless forced
    assert json.loads(metadata_path(path).read_text())["config"]["preset"] is None


def test_add_metadata_on_a_foreign_file_leads_with_the_one_line_reason(tmp_path, capsys):
    path = tmp_path / "convnext.safetensors"
    safetensors.torch.save_file({"stem.0.weight": torch.zeros(4, 3, 4, 4)}, path)
    assert harness_cli(["add-metadata", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith(f"error: {path}: not a resampler checkpoint"), error


def test_add_metadata_records_the_prefix_and_later_loads_use_it(tmp_path, capsys):
    model = trained()
    path = lightning_ckpt(tmp_path / "last.ckpt", model, prefixes=(WRAPPER_PREFIX, "ema.resampler."))
    assert harness_cli(["add-metadata", str(path)]) == 2
    assert "ambiguous key prefix" in capsys.readouterr().err
    assert harness_cli(["add-metadata", str(path), "--prefix", WRAPPER_PREFIX.rstrip(".")]) == 0
    assert f"prefix     = '{WRAPPER_PREFIX}' <- argument" in capsys.readouterr().out
    assert json.loads(metadata_path(path).read_text())["weights"]["prefix"] == WRAPPER_PREFIX
    loaded = load_checkpoint(path)  # ambiguous by detection, settled by the metadata
    assert (loaded.prefix.value, str(loaded.prefix.source)) == (WRAPPER_PREFIX, "metadata")
    assert {str(s) for s in loaded.sources.values()} == {"metadata"}
    assert loaded.config == ResamplerConfig(**{**TINY.to_dict(), "preset": None})  # preset: not in weights
    contradiction = rf"prefix='ema.resampler.' contradicts the prefix '{WRAPPER_PREFIX}' recorded in its metadata"
    with pytest.raises(CheckpointError, match=contradiction):
        load_checkpoint(path, prefix="ema.resampler.")


def test_add_metadata_offers_exactly_the_variants_as_presets(tmp_path, capsys):
    path = tmp_path / "legacy.pth"
    torch.save(trained().state_dict(), path)
    with pytest.raises(SystemExit) as exit_info:
        harness_cli(["add-metadata", str(path), "--preset", "large"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'large' (choose from 'bimamba', 'bimamba_large')" in error, error
    assert len(error.strip().splitlines()) == 1, error
