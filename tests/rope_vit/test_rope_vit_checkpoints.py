"""Both RoPE-ViT checkpoint layouts load: timm's and the original naver-ai release's.

The original-layout files are written from the release's key names (``deit/models_v2_rope.py``:
top-level ``freqs`` of shape (2, depth, embed_dim / 2), ``freqs_t_x``/``freqs_t_y`` grid buffers,
everything else as in timm), wrapped in ``{"model": ...}`` as the DeiT training script saves.
"""

from __future__ import annotations

import pytest
import torch

from candidates.checkpoints import inspect_state_dict, load_state_dict, rope_vit_to_original, save_state_dict
from candidates.rope_vit import (
    convert_original_state_dict, convert_timm_state_dict, is_original_layout, load_rope_vit_state_dict,
    rope_mixed_vit,
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
    with pytest.raises(ValueError, match=r"does not fit RopeMixedViT\(embed_dim=384, depth=1\).*unexpected \['blocks.1"):
        load_rope_vit_state_dict(target, state)
