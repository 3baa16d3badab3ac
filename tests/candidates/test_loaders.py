"""Every checkpoint loader error names the file; malformed metadata gets the loader's own error type.

Checkpoints are tiny synthetic state dicts written into ``tmp_path``."""

import json

import pytest
import torch

from candidates.mformer import build_mformer
from candidates.recognize import inspect_checkpoint
from candidates.io import load_state_dict, naming_file, save_state_dict
from candidates.resampler.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, write_metadata
from candidates.resampler.resampler import BiMambaResampler, ResamplerConfig
from candidates.videomt.convert import load_upstream, load_upstream_dinov3

VIT = "backbone.encoder.backbone."
DINOV2_ARGS = dict(num_heads=2, layer_norm_eps=1e-6, hidden_act="gelu")
DINOV3_ARGS = dict(DINOV2_ARGS, rope_theta=100.0, image_size=16)
TINY = ResamplerConfig(vision_dim=6, hidden_dim=8, out_dim=5, depth=1, expand=1.5, d_state=3, d_conv=3)

FOREIGN = {
    "convnext": {"stem.0.weight": torch.ones(8, 3, 4, 4), "stages.0.blocks.0.conv_dw.weight": torch.ones(8, 1, 7, 7)},
    "rope_vit": {"cls_token": torch.ones(1, 1, 8), "rope.freqs": torch.ones(2, 1, 2, 2),
                 "blocks.0.norm1.weight": torch.ones(8)},
    "resampler": {"input_proj.weight": torch.ones(8, 6), "output_proj.weight": torch.ones(5, 8)},
    "videomt_dinov3": {f"{VIT}patch_embed.patch_embeddings.weight": torch.ones(8, 3, 4, 4)},
    "videomt_dinov2": {f"{VIT}patch_embed.proj.weight": torch.ones(8, 3, 4, 4)},
    "eomt_dinov3": {"network.encoder.backbone.patch_embed.patch_embeddings.weight": torch.ones(8, 3, 4, 4)},
}


def _write(tmp_path, family: str, suffix: str = ".pth"):
    return save_state_dict(FOREIGN[family], tmp_path / f"{family}{suffix}")


# -- VidEoMT loaders on other families -----------------------------------------------------------
@pytest.mark.parametrize("family", ["convnext", "rope_vit", "resampler", "videomt_dinov3", "eomt_dinov3"])
def test_videomt_loader_names_the_file_of_a_foreign_family(tmp_path, family):
    path = _write(tmp_path, family)
    with pytest.raises(ValueError) as caught:
        load_upstream(path, **DINOV2_ARGS)
    assert str(path) in str(caught.value), f"the error does not name {path}: {caught.value}"


@pytest.mark.parametrize("family", ["convnext", "rope_vit", "resampler", "videomt_dinov2", "eomt_dinov3"])
def test_videomt_dinov3_loader_names_the_file_of_a_foreign_family(tmp_path, family):
    path = _write(tmp_path, family, ".safetensors")
    with pytest.raises(ValueError) as caught:
        load_upstream_dinov3(path, **DINOV3_ARGS)
    assert str(path) in str(caught.value), f"the error does not name {path}: {caught.value}"


@pytest.mark.parametrize("loader", [load_upstream, load_upstream_dinov3])
@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_videomt_loaders_name_an_unreadable_file(tmp_path, loader, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=str(path)):
        loader(path, **DINOV3_ARGS) if loader is load_upstream_dinov3 else loader(path, **DINOV2_ARGS)


def test_a_directory_where_the_checkpoint_should_be_is_named(tmp_path):
    path = tmp_path / "model.pth"
    path.mkdir()
    for load in (load_state_dict, lambda p: load_upstream(p, **DINOV2_ARGS), inspect_checkpoint):
        with pytest.raises(IsADirectoryError, match=rf"{path} is a directory, not a checkpoint file"):
            load(path)


# -- family recognition ----------------------------------------------------------------------------
@pytest.mark.parametrize("state, problem", [
    ({"cls_token": torch.ones(1, 1, 8), "rope.freqs": torch.ones(2, 3)}, "rope.freqs must be"),
    ({"cls_token": torch.ones(()), "freqs": torch.ones(2, 1, 8)}, "IndexError"),
], ids=["misshapen-rope-freqs", "zero-dim-cls-token"])
def test_inspect_names_the_file_of_a_malformed_checkpoint(tmp_path, state, problem):
    path = save_state_dict(state, tmp_path / "odd.safetensors")
    with pytest.raises(ValueError) as caught:
        inspect_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: ") and problem in str(caught.value), caught.value


def test_build_mformer_names_the_file_that_is_not_a_convnext(tmp_path):
    vit = _write(tmp_path, "rope_vit")
    other = _write(tmp_path, "resampler")
    with pytest.raises(ValueError, match=str(other)):
        build_mformer(other, vit)


def test_naming_file_keeps_the_error_type_and_leaves_named_errors_alone(tmp_path):
    with pytest.raises(CheckpointError, match=r"^ckpt\.pth: bad$"):
        with naming_file("ckpt.pth"):
            raise CheckpointError("bad")
    with pytest.raises(ValueError, match=r"^already names ckpt\.pth$"):
        with naming_file("ckpt.pth"):
            raise ValueError("already names ckpt.pth")
    with pytest.raises(TypeError, match=r"^an argument$"):  # not about the file: unchanged
        with naming_file("ckpt.pth"):
            raise TypeError("an argument")


# -- resampler metadata ----------------------------------------------------------------------------
@pytest.fixture
def resampler(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "final.safetensors"
    meta = save_checkpoint(BiMambaResampler(TINY), path)
    return path, meta


def _edit(meta, **changes) -> None:
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
def test_metadata_of_wrong_types_is_a_checkpoint_error_naming_the_file(resampler, change):
    path, meta = resampler
    _edit(meta, **change)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(meta) in str(caught.value) or str(path) in str(caught.value), f"names neither file: {caught.value}"


def test_a_directory_where_the_metadata_should_be_is_a_checkpoint_error(resampler):
    path, meta = resampler
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
