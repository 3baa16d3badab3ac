"""Checkpoint files that carry their configuration: metadata, shape inference and defaults, each tested.

The key layouts these files hold (bare, under a training wrapper's prefix) are read by
``candidates/resampler/convert.py`` and tested in ``test_resampler_convert.py``; here they are
tested through the files a user loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
from helpers import write_malicious_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

from resampler_toys import TINY, WRAPPER_PREFIX, features, lightning_ckpt, trained

from candidates.resampler import checkpoint as ckpt
from candidates.resampler.checkpoint import (
    CheckpointError, load_checkpoint, load_weights_into, metadata_path, read_weights, save_checkpoint, write_metadata,
)
from candidates.resampler.resampler import BiMambaResampler, ResamplerConfig

NOT_IN_WEIGHTS = {"norm_eps", "preset"}
MIXER_FIELDS = {"expand", "d_state", "d_conv", "dt_rank", "bias", "conv_bias"}


@st.composite
def configs(draw) -> ResamplerConfig:
    hidden = draw(st.integers(2, 12))
    return ResamplerConfig(
        vision_dim=draw(st.integers(1, 7)),
        hidden_dim=hidden,
        out_dim=draw(st.integers(1, 6)),
        depth=draw(st.integers(0, 2)),
        expand=draw(st.integers(1, 3 * hidden)) / hidden,  # any whole inner width, e.g. 7 / 12
        d_state=draw(st.integers(1, 4)),
        d_conv=draw(st.integers(1, 4)),
        dt_rank=draw(st.integers(1, 3)),
        bias=draw(st.booleans()),
        conv_bias=draw(st.booleans()),
        norm_eps=draw(st.sampled_from([1e-5, 1e-6])),
        preset=draw(st.sampled_from([None, "custom"])),
    )


# --- save ---------------------------------------------------------------------------------------


def test_save_writes_weights_and_complete_metadata(tmp_path):
    model = trained()
    meta_path = save_checkpoint(model, tmp_path / "run" / "final.safetensors")
    assert meta_path == tmp_path / "run" / "final.metadata.json"
    document = json.loads(meta_path.read_text())
    assert document["config"] == TINY.to_dict()  # every field, preset included
    assert set(document["versions"]) == {"python", "torch", "safetensors", "parity-harness"}
    assert document["versions"]["torch"] == torch.__version__
    weights = (tmp_path / "run" / "final.safetensors").read_bytes()
    assert document["weights"] == {"file": "final.safetensors", "sha256": hashlib.sha256(weights).hexdigest(), "prefix": ""}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["final.metadata.json", "final.safetensors"]


def test_save_is_atomic_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "final.safetensors"
    save_checkpoint(trained(seed=0), path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(trained(seed=1), path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old files intact, no temp left


def test_save_rejects_other_formats(tmp_path):
    with pytest.raises(ValueError, match=r"saved as \.safetensors, got 'final\.pth'"):
        save_checkpoint(trained(), tmp_path / "final.pth")
    with pytest.raises(TypeError, match=r"^save_checkpoint\(model\) must be a BiMambaResampler, got Linear$"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "final.safetensors")


# --- round trips (hypothesis) --------------------------------------------------------------------


@pytest.mark.property
@settings(deadline=None)
@given(config=configs(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_save_load_is_bitwise(config, dtype):
    model = trained(config, dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        save_checkpoint(model, path)
        loaded = load_checkpoint(path)
    assert loaded.config == config
    assert {str(s) for s in loaded.sources.values()} == {"metadata"}
    original, restored = model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert restored[key].dtype == dtype and torch.equal(restored[key], original[key]), key
    x = features(config, dtype)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


@pytest.mark.property
@settings(deadline=None)
@given(config=configs())
def test_metadata_less_load_infers_the_same_config(config):
    defaults = ResamplerConfig(norm_eps=1e-4, preset="from-defaults")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        save_checkpoint(trained(config), path)
        metadata_path(path).unlink()
        loaded = load_checkpoint(path, defaults=defaults)
    from_defaults = NOT_IN_WEIGHTS | (MIXER_FIELDS if config.depth == 0 else set())
    for field in ResamplerConfig.field_names():
        source = loaded.sources[field]
        if field in from_defaults:
            assert (source.kind, getattr(loaded.config, field)) == ("defaults", getattr(defaults, field)), field
        else:
            assert (source.kind, getattr(loaded.config, field)) == ("weights", getattr(config, field)), field
    assert loaded.config.d_inner == config.d_inner or config.depth == 0


@pytest.mark.property
@settings(deadline=None)
@given(keep=st.floats(0.0, 0.999), with_metadata=st.booleans())
def test_truncated_file_is_a_clear_error_naming_it(keep, with_metadata):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        save_checkpoint(trained(), path)
        if not with_metadata:
            metadata_path(path).unlink()
        data = path.read_bytes()
        path.write_bytes(data[: int(keep * len(data))])
        with pytest.raises(CheckpointError, match="truncated or corrupted|sha256") as info:
            load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.property
@settings(deadline=None)
@given(position=st.floats(0.0, 0.999), flip=st.integers(1, 255))
def test_corrupted_byte_is_a_clear_error_naming_it(position, flip):
    """Any changed byte: a broken header, or (in the tensor data) the metadata's hash no longer matches."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        save_checkpoint(trained(), path)
        data = bytearray(path.read_bytes())
        data[int(position * len(data))] ^= flip
        path.write_bytes(bytes(data))
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
    assert str(path) in str(info.value)


def test_corrupted_metadata_is_an_error_naming_it(tmp_path):
    path = tmp_path / "m.safetensors"
    meta = save_checkpoint(trained(), path)
    meta.write_text(meta.read_text()[:40])
    with pytest.raises(CheckpointError, match=f"{meta}: metadata is not valid JSON"):
        load_checkpoint(path)


def test_stale_metadata_is_refused(tmp_path):
    """New weights next to an old metadata file (a crash between the two writes, a manual copy)."""
    path, other = tmp_path / "m.safetensors", tmp_path / "other.safetensors"
    save_checkpoint(trained(seed=0), path)
    save_checkpoint(trained(seed=1), other)
    os.replace(other, path)
    with pytest.raises(CheckpointError, match=r"written for weights with sha256 .* add-metadata .* --force"):
        load_checkpoint(path)


# --- contradictions and mismatches ---------------------------------------------------------------


def test_metadata_contradicting_weights_names_field_values_and_tensor(tmp_path):
    path = tmp_path / "m.safetensors"
    meta = save_checkpoint(trained(), path)
    document = json.loads(meta.read_text())
    document["config"].update(hidden_dim=12, d_state=5)
    meta.write_text(json.dumps(document))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "hidden_dim: metadata says 12, but tensor input_proj.weight (8, 6) implies 8" in message
    assert "d_state: metadata says 5, but tensor blocks.0.forward_block.A_log (12, 3) implies 3" in message
    assert str(path) in message


def test_shape_mismatch_lists_every_key_and_a_fitting_config(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(trained(), path)
    wrong = BiMambaResampler(ResamplerConfig(vision_dim=6, hidden_dim=8, out_dim=5, depth=2, expand=2.0, d_state=3, d_conv=3))
    with pytest.raises(CheckpointError) as info:
        load_weights_into(wrong, path)
    message = str(info.value)
    mismatched = [k for k, v in wrong.state_dict().items() if read_weights(path)[k].shape != v.shape]
    # 2 blocks x 2 mixers x 9 (A_log, D, in_proj, conv1d w+b, x_proj, dt_proj w+b, out_proj).
    assert len(mismatched) == 36
    assert f"{len(mismatched)} mismatched keys" in message
    for key in mismatched:
        assert f"  {key}: checkpoint " in message
    assert "blocks.1.backward_block.in_proj.weight: checkpoint (24, 8) vs model (32, 8)" in message
    assert "expand=1.5" in message and "A model that fits: BiMambaResampler(ResamplerConfig(" in message


def test_load_weights_into_a_fitting_model_is_bitwise(tmp_path):
    path = tmp_path / "m.safetensors"
    model = trained()
    save_checkpoint(model, path)
    target = BiMambaResampler(TINY)
    load_weights_into(target, path)
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), model.state_dict().values()))


def test_not_a_resampler_is_an_error(tmp_path):
    path = tmp_path / "odd.safetensors"
    state = trained().state_dict()
    state["blocks.0.forward_block.in_proj.weight"] = torch.zeros(25, 8)
    safetensors.torch.save_file(state, path)
    with pytest.raises(CheckpointError, match=r"in_proj.weight \(25, 8\) should have an even row count"):
        load_checkpoint(path)


# --- a legacy run without metadata -----------------------------------------------------------------


def test_a_1024_x_1_75_checkpoint_loads_into_code_with_1536_x_2_defaults(tmp_path):
    """Trained with hidden 1024 / expand 1.75 (a released model's widths; depth 1 and d_state 4 for speed),
    evaluated by code whose defaults are 1536 / 2.0."""
    trained_config = ResamplerConfig.from_preset("bimamba", vision_dim=1152, out_dim=64, depth=1, d_state=4)
    original = trained(trained_config)
    eval_defaults = ResamplerConfig(vision_dim=1152, out_dim=64, depth=1, d_state=4)
    assert (eval_defaults.hidden_dim, eval_defaults.expand) == (1536, 2.0)
    path = tmp_path / "final.safetensors"
    save_checkpoint(original, path)
    x = features(trained_config, torch.float32, tokens=6)
    with torch.no_grad():
        expected = original(x)

    # The failure this guards against: build from defaults, then load. Now one error with every key and the fix.
    with pytest.raises(CheckpointError, match=r"input_proj.weight: checkpoint \(1024, 1152\) vs model \(1536, 1152\)"):
        load_weights_into(BiMambaResampler(eval_defaults), path)

    # Layer 1: metadata.
    loaded = load_checkpoint(path, defaults=eval_defaults)
    assert (loaded.config.hidden_dim, loaded.config.expand, loaded.config.d_inner) == (1024, 1.75, 1792)
    assert str(loaded.sources["hidden_dim"]) == str(loaded.sources["expand"]) == "metadata"
    assert loaded.config.preset == "bimamba"
    with torch.no_grad():
        assert torch.equal(loaded.model(x), expected)

    # Layer 2: a legacy checkpoint without metadata, by inference from the shapes.
    metadata_path(path).unlink()
    legacy = load_checkpoint(path, defaults=eval_defaults)
    assert (legacy.config.hidden_dim, legacy.config.expand, legacy.config.d_inner) == (1024, 1.75, 1792)
    assert str(legacy.sources["hidden_dim"]) == "weights (input_proj.weight (1024, 1152))"
    assert str(legacy.sources["expand"]) == "weights (blocks.0.forward_block.in_proj.weight (3584, 1024): 1792 / 1024)"
    # Layer 3: what the weights cannot tell comes from the defaults, and says so.
    assert (legacy.config.preset, str(legacy.sources["preset"])) == (None, "defaults")
    assert "expand     = 1.75         <- weights" in legacy.describe()
    with torch.no_grad():
        assert torch.equal(legacy.model(x), expected)


# --- legacy pickles ----------------------------------------------------------------------------------


def test_pth_state_dict_loads_weights_only(tmp_path):
    model = trained()
    for name, payload in (("plain.pth", model.state_dict()), ("lightning.ckpt", {"state_dict": model.state_dict(), "epoch": 3})):
        torch.save(payload, tmp_path / name)
        loaded = load_checkpoint(tmp_path / name, defaults=TINY)
        assert loaded.config == TINY
        assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), model.state_dict().values()))


def test_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path):
    marker, path = tmp_path / "pwned.txt", tmp_path / "evil.pth"
    state = trained().state_dict()
    write_malicious_checkpoint(path, state, marker, key="input_proj.weight")
    for load in (load_checkpoint, read_weights, write_metadata):
        with pytest.raises(CheckpointError, match=f"{path}: refused to unpickle.*weights_only=True"):
            load(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the same file, unpickled unsafely, does run its code
    assert marker.read_text() == "pwned"


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*nope.safetensors"):
        load_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint type '\.npz'"):
        read_weights(tmp_path / "w.npz")
    with pytest.raises(TypeError, match=r"^defaults must be a ResamplerConfig, got dict \{\}; or None for ResamplerConfig\(\)$"):
        load_checkpoint(tmp_path / "w.npz", defaults={})


# --- key prefixes: the resampler inside a bigger (Lightning) checkpoint ----------------------------


def test_a_lightning_ckpt_without_metadata_is_found_under_its_prefix_stripped_and_reported(tmp_path):
    """A training run's real keys: resampler_module.resampler.* inside a Lightning state_dict, no metadata."""
    trained_config = ResamplerConfig.from_preset("bimamba", vision_dim=1152, out_dim=64, depth=1, d_state=4)
    original = trained(trained_config)
    path = lightning_ckpt(tmp_path / "last.ckpt", original)
    eval_defaults = ResamplerConfig(vision_dim=1152, out_dim=64, depth=1, d_state=4)  # 1536 / 2.0

    loaded = load_checkpoint(path, defaults=eval_defaults)
    assert (loaded.config.hidden_dim, loaded.config.expand, loaded.config.d_inner) == (1024, 1.75, 1792)
    assert loaded.prefix.value == WRAPPER_PREFIX and loaded.prefix.ignored == 2
    assert str(loaded.prefix.source) == f"detected (the only key ending in input_proj.weight: {WRAPPER_PREFIX}input_proj.weight)"
    assert str(loaded.sources["hidden_dim"]) == "weights (input_proj.weight (1024, 1152))"
    assert f"prefix     = '{WRAPPER_PREFIX}' <- detected" in loaded.describe()
    assert "2 keys outside it ignored" in loaded.describe()
    x = features(trained_config, torch.float32, tokens=6)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), original(x))

    target = BiMambaResampler(trained_config)
    assert load_weights_into(target, path).value == WRAPPER_PREFIX
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), original.state_dict().values()))
    fit_error = rf"(?s)key prefix '{WRAPPER_PREFIX}' <- detected .*input_proj.weight: checkpoint \(1024, 1152\) vs model \(1536, 1152\)"
    with pytest.raises(CheckpointError, match=fit_error):
        load_weights_into(BiMambaResampler(eval_defaults), path)


def test_explicit_prefix_with_or_without_the_trailing_dot(tmp_path):
    model = trained()
    path = lightning_ckpt(tmp_path / "last.ckpt", model)
    for written in (WRAPPER_PREFIX, WRAPPER_PREFIX.rstrip(".")):
        loaded = load_checkpoint(path, defaults=TINY, prefix=written)
        assert (loaded.prefix.value, str(loaded.prefix.source), loaded.config) == (WRAPPER_PREFIX, "argument", TINY)
    no_such = r"no key starts with prefix 'resampler\.'; prefixes followed by input_proj.weight in this file: \['resampler_"
    with pytest.raises(CheckpointError, match=no_such):
        load_checkpoint(path, prefix="resampler")
    with pytest.raises(TypeError, match=r"^prefix must be a str such as 'resampler_module.resampler.', got int 3$"):
        load_checkpoint(path, prefix=3)


def test_ambiguous_prefix_is_an_error_listing_the_candidates(tmp_path):
    """Two resamplers (e.g. the model and its EMA copy): refuse to pick one; prefix= chooses."""
    model = trained()
    path = lightning_ckpt(tmp_path / "last.ckpt", model, prefixes=(WRAPPER_PREFIX, "ema.resampler."))
    for action in (lambda: load_checkpoint(path), lambda: load_weights_into(BiMambaResampler(TINY), path),
                   lambda: write_metadata(path)):
        with pytest.raises(CheckpointError) as info:
            action()
        message = str(info.value)
        assert f"{path}: ambiguous key prefix: 2 prefixes are followed by input_proj.weight" in message
        n = len(model.state_dict())
        assert f"'ema.resampler.': {n} keys" in message and f"'{WRAPPER_PREFIX}': {n} keys" in message
        assert "Pick one with prefix='ema.resampler.' (CLI: --prefix ema.resampler.)" in message
    loaded = load_checkpoint(path, defaults=TINY, prefix="ema.resampler")
    assert loaded.prefix.value == "ema.resampler." and loaded.prefix.ignored == n + 2


def test_no_resampler_keys_say_so_instead_of_only_listing_missing_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, path)
    hint = r"other.pth: not a resampler checkpoint: no key ends in input_proj.weight under prefix ''.*\['encoder.weight'\].*--prefix"
    with pytest.raises(CheckpointError, match=hint):
        load_checkpoint(path)


def test_saved_checkpoints_record_the_empty_prefix(tmp_path):
    path = tmp_path / "m.safetensors"
    meta = save_checkpoint(trained(), path)
    assert json.loads(meta.read_text())["weights"]["prefix"] == ""
    loaded = load_checkpoint(path)
    assert (loaded.prefix.value, str(loaded.prefix.source), loaded.prefix.ignored) == ("", "metadata", 0)


# --- metadata of the wrong shape ---------------------------------------------------------------


@pytest.fixture
def saved_resampler(tmp_path):
    """(weights path, metadata path) of a saved tiny resampler."""
    path = tmp_path / "final.safetensors"
    return path, save_checkpoint(trained(), path)


def _edit_metadata(meta: Path, **changes) -> None:
    """Set fields of the metadata JSON; ``a__b`` is field ``b`` of object ``a``."""
    document = json.loads(meta.read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = document
        for key in parents:
            target = target[key]
        target[leaf] = value
    meta.write_text(json.dumps(document))


@pytest.mark.parametrize("change", [
    {"weights": "text"}, {"weights": ["final.safetensors"]}, {"weights": None},
    {"config__expand": "1.5"}, {"config__norm_eps": "small"}, {"config__depth": 1.5}, {"config__bias": "yes"},
    {"config": ["hidden_dim"]}, {"format_version": "1"},
], ids=lambda change: "-".join(f"{k}={v!r}" for k, v in change.items()))
def test_metadata_of_wrong_types_is_a_checkpoint_error_naming_the_file(saved_resampler, change):
    path, meta = saved_resampler
    _edit_metadata(meta, **change)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(meta) in str(caught.value) or str(path) in str(caught.value), f"names neither file: {caught.value}"


def test_a_directory_where_the_metadata_should_be_is_a_checkpoint_error(saved_resampler):
    path, meta = saved_resampler
    meta.unlink()
    meta.mkdir()
    with pytest.raises(CheckpointError, match=rf"{meta} is a directory where the metadata JSON file"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=rf"{meta} is a directory"):
        write_metadata(path, force=True)


def test_a_directory_where_the_resampler_weights_should_be_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "final.safetensors"
    path.mkdir()
    with pytest.raises(CheckpointError, match=rf"{path} is a directory, not a checkpoint file"):
        load_checkpoint(path)
