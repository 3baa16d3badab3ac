"""candidates.rope_vit.convert: both checkpoint layouts (timm's, the original naver-ai release's) and recognition.

The original-layout files are written from the release's key names (``deit/models_v2_rope.py``:
top-level ``freqs`` of shape (2, depth, embed_dim / 2), ``freqs_t_x``/``freqs_t_y`` grid buffers,
everything else as in timm), wrapped in ``{"model": ...}`` as the DeiT training script saves.
"""

from __future__ import annotations

import pytest
import torch

from candidates.io import load_state_dict, save_state_dict
from candidates.recognize import inspect_state_dict
from candidates.rope_vit import rope_mixed_vit
from candidates.rope_vit.convert import (
    ORIGINAL, convert_original_state_dict, convert_timm_state_dict, is_original_layout, load_rope_vit_state_dict,
    recognize, rope_vit_to_original,
)

IMAGE = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))


def source_model():
    torch.manual_seed(0)
    model = rope_mixed_vit("small", depth=2, num_classes=5).eval()
    with torch.no_grad():
        model.rope.freqs.normal_()
    return model


def test_original_key_mapping_is_a_pure_reshape_of_freqs():
    state = source_model().state_dict()
    original = rope_vit_to_original(state)
    assert original["freqs"].shape == (2, 2, 192)
    assert {"freqs_t_x", "freqs_t_y"} <= set(original) and "rope.freqs" not in original
    assert is_original_layout(original) and not is_original_layout(state)
    converted, dropped = convert_original_state_dict(original, num_heads=6)
    assert dropped == ["freqs_t_x", "freqs_t_y"]
    assert converted.keys() == state.keys()
    for key in state:
        assert torch.equal(converted[key], state[key]), key
    # the grid buffers are the release's init_t_xy: column, then row index of each token
    torch.testing.assert_close(original["freqs_t_x"][:16], torch.arange(14.0).repeat(2)[:16])
    assert original["freqs_t_y"][14].item() == 1.0


def test_timm_mapping_is_the_identity():
    state = source_model().state_dict()
    assert convert_timm_state_dict(state) == state and convert_timm_state_dict(state) is not state


@pytest.mark.parametrize("filename", ["timm.safetensors", "timm.pth", "rope_mixed_deit_small_patch16_LS.pth"])
def test_both_layouts_load_from_files_with_identical_outputs(tmp_path, filename):
    source = source_model()
    state = source.state_dict()
    original = filename.startswith("rope_mixed_deit")
    path = save_state_dict(rope_vit_to_original(state) if original else state, tmp_path / filename,
                           wrap="model" if original else None)
    loaded_state = load_state_dict(path)
    info = inspect_state_dict(loaded_state)
    assert (info.family, info.layout) == ("rope_mixed_vit", "original" if original else "timm")
    target = rope_mixed_vit("small", depth=2, num_classes=5).eval()
    dropped = load_rope_vit_state_dict(target, loaded_state)
    assert dropped == (["freqs_t_x", "freqs_t_y"] if original else [])
    with torch.no_grad():
        assert torch.equal(target(IMAGE), source(IMAGE))


def test_wrong_head_count_for_original_freqs_is_named():
    original = rope_vit_to_original(source_model().state_dict())
    with pytest.raises(ValueError, match=r"\(2, depth, heads \* head_dim // 2\) with heads=7, got \(2, 2, 192\)"):
        convert_original_state_dict(original, num_heads=7)


def test_checkpoint_of_another_depth_is_refused_with_keys():
    state = source_model().state_dict()
    target = rope_mixed_vit("small", depth=1, num_classes=5)
    with pytest.raises(ValueError, match=r"(?s)does not fit RopeMixedViT\(embed_dim=384, depth=1\).*\n  blocks\.1\.\S+: unexpected in checkpoint"):
        load_rope_vit_state_dict(target, state)


def _release_keys(depth: int) -> set[str]:
    """Every key the release's ``rope_mixed_deit_*_patch16_LS`` of ``depth`` blocks saves (deit/models_v2_rope.py)."""
    keys = {"cls_token", "freqs", "freqs_t_x", "freqs_t_y", "patch_embed.proj.weight", "patch_embed.proj.bias",
            "norm.weight", "norm.bias", "head.weight", "head.bias"}
    for i in range(depth):
        keys |= {f"blocks.{i}.gamma_1", f"blocks.{i}.gamma_2"}
        keys |= {f"blocks.{i}.{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
                 for p in ("weight", "bias")}
    return keys


def test_our_keys_read_backward_are_the_original_release_names():
    assert set(rope_vit_to_original(source_model().state_dict())) == _release_keys(depth=2)


def test_original_layout_round_trips_through_the_table():
    original = rope_vit_to_original(source_model().state_dict())
    converted, _ = convert_original_state_dict(original, num_heads=6)
    again = rope_vit_to_original(converted)
    assert again.keys() == original.keys()
    for key in original:
        assert torch.equal(again[key], original[key]), f"original -> timm -> original changed {key}"


def test_the_grid_buffers_are_read_as_ignored_not_dropped_silently():
    mapping = ORIGINAL.map(rope_vit_to_original(source_model().state_dict()), to="candidate")
    assert mapping.ignored == ["freqs_t_x", "freqs_t_y"] and mapping.unmatched == []


def test_a_key_outside_the_original_layout_is_named():
    original = rope_vit_to_original(source_model().state_dict())
    original["pos_embed"] = torch.zeros(1, 197, 384)  # the release's absolute embedding, off in RoPE-Mixed
    with pytest.raises(ValueError, match=r"RoPE-ViT original release .*1 of \d+ keys match no rule: 'pos_embed'"):
        convert_original_state_dict(original, num_heads=6)


@pytest.mark.parametrize("original", [False, True], ids=["timm", "original"])
def test_recognize_reads_the_dims_of_either_layout(original):
    state = source_model().state_dict()
    info = recognize(rope_vit_to_original(state) if original else state, num_heads=6 if original else None)
    assert (info.family, info.layout) == ("rope_mixed_vit", "original" if original else "timm")
    assert info.dims == {"embed_dim": 384, "depth": 2, "num_heads": 6, "patch_size": 16, "mlp_dim": 1536,
                         "num_classes": 5}
    assert info.num_heads_source == ("given" if original else "derived")
    assert info.num_params == sum(v.numel() for v in state.values()), "grid buffers are not parameters"


def test_recognize_names_a_block_missing_between_stored_ones():
    state = {k: v for k, v in source_model().state_dict().items() if not k.startswith("blocks.0.")}
    info = recognize(state)
    assert info.dims["depth"] == 1
    assert [n.split(": the")[0] for n in info.notes] == ["blocks: 0 missing from 0-1"], info.notes


def test_recognize_is_none_for_another_family():
    assert recognize({"stem.0.weight": torch.zeros(8, 3, 4, 4), "stages.0.blocks.0.gamma": torch.zeros(8)}) is None
