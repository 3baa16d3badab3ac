"""candidates.layers: the primitives several families share compute what their upstreams compute."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from candidates import layers
from candidates.layers import (
    LayerNorm2d, Mlp, RopeEmbedding, apply_rope_to_patches, patch_center_coords, patch_grid, rotate_half,
)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------- LayerNorm2d, Mlp


def test_layernorm2d_normalizes_each_pixels_channels():
    norm = LayerNorm2d(6, eps=1e-5).double()
    nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
    x = _randn(2, 6, 3, 5)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, 1e-5).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), expected, rtol=0, atol=0)


def test_layernorm2d_default_eps_is_convnexts():
    assert LayerNorm2d(4).eps == 1e-6


@pytest.mark.parametrize("family", ["convnext", "videomt", "mformer"])
def test_families_use_the_shared_layernorm2d(family):
    import importlib

    module = importlib.import_module({"convnext": "candidates.convnext", "videomt": "candidates.videomt.videomt",
                                      "mformer": "candidates.mformer.mformer"}[family])
    assert module.LayerNorm2d is layers.LayerNorm2d, f"{family} defines its own LayerNorm2d"


def test_mlp_keeps_the_upstream_parameter_names():
    assert list(Mlp(4, 8).state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


def test_mlp_is_fc1_activation_fc2():
    mlp = Mlp(4, 8, act_layer=nn.ReLU).double()
    x = _randn(3, 4)
    torch.testing.assert_close(mlp(x), mlp.fc2(torch.relu(mlp.fc1(x))), rtol=0, atol=0)


# --------------------------------------------------------------------------- patch_grid


def test_patch_grid_counts_patches_down_and_across():
    assert patch_grid("image", torch.zeros(2, 3, 32, 80), in_chans=3, stride=16) == (2, 5)


def test_patch_grid_refuses_an_empty_side_before_the_convolution_sees_it():
    with pytest.raises(ValueError, match=r"^image shape must be \(B, 3, H, W\) with H, W multiples of 16, "
                                         r"got \(1, 3, 0, 16\); resize or pad the image to multiples of 16 pixels$"):
        patch_grid("image", torch.zeros(1, 3, 0, 16), in_chans=3, stride=16)


def test_patch_grid_advice_can_name_the_familys_own_resizing():
    with pytest.raises(ValueError, match=r"got \(1, 3, 20, 16\); use the processor$"):
        patch_grid("image", torch.zeros(1, 3, 20, 16), in_chans=3, stride=16, fix="use the processor")


def test_patch_grid_refuses_a_non_tensor_with_a_type_error():
    with pytest.raises(TypeError, match=r"^image must be a Tensor, got list \[0\]$"):
        patch_grid("image", [0], in_chans=3, stride=16)


# --------------------------------------------------------------------------- DINOv3 RoPE


def test_patch_centres_are_band_midpoints_in_minus_one_to_one():
    coords = patch_center_coords((2, 4))
    assert coords.dtype == torch.float32 and coords.shape == (8, 2)
    assert coords[:, 0].tolist() == [-0.5] * 4 + [0.5] * 4  # rows: centres of 2 bands
    assert coords[:4, 1].tolist() == [-0.75, -0.25, 0.25, 0.75]  # columns: centres of 4 bands


def test_rotate_half_maps_x1_x2_to_minus_x2_x1():
    x = torch.arange(1.0, 5.0)
    assert rotate_half(x).tolist() == [-3.0, -4.0, 1.0, 2.0]


def test_rope_leaves_the_tokens_in_front_of_the_patches_alone():
    cos, sin = RopeEmbedding(8, theta=100.0, impl="periods")((2, 3), dtype=torch.float64, device="cpu")
    x = _randn(1, 2, 5 + 6, 8)
    out = apply_rope_to_patches(x, cos, sin)
    assert torch.equal(out[:, :, :5], x[:, :, :5])


def _pair_lengths(t):
    """Squared lengths of the rotate-half pairs ``(i, i + head_dim / 2)``."""
    half = t.shape[-1] // 2
    return t[..., :half] ** 2 + t[..., half:] ** 2


def test_rope_rotates_each_pair_without_changing_its_length():
    cos, sin = RopeEmbedding(8, theta=100.0, impl="inv_freq")((2, 3), dtype=torch.float64, device="cpu")
    x = _randn(1, 2, 6, 8)
    out = apply_rope_to_patches(x, cos, sin)
    torch.testing.assert_close(_pair_lengths(out), _pair_lengths(x), rtol=1e-12, atol=0)
    assert (out - x).abs().max() > 0.1


def test_rope_spellings_agree_to_float32_rounding_but_not_bitwise():
    """The two ports' roundings: equal in float32 up to a few ulps, distinct in float64."""
    tables = {impl: RopeEmbedding(16, theta=100.0, impl=impl)((12, 20), dtype=torch.float64, device="cpu")
              for impl in ("periods", "inv_freq")}
    difference = (tables["periods"][0] - tables["inv_freq"][0]).abs().max()
    assert 0 < difference < 1e-5


@pytest.mark.parametrize("impl", ["periods", "inv_freq"])
def test_rope_tables_are_computed_in_float32_then_cast(impl):
    rope = RopeEmbedding(16, theta=100.0, impl=impl)
    cos32, sin32 = rope((12, 20), dtype=torch.float32, device="cpu")
    cos16, sin16 = rope((12, 20), dtype=torch.bfloat16, device="cpu")
    assert cos16.dtype == torch.bfloat16
    assert torch.equal(cos16, cos32.to(torch.bfloat16)) and torch.equal(sin16, sin32.to(torch.bfloat16))
    # ...which is not what computing the angles in bfloat16 would give
    angles_bf16 = torch.atan2(sin32, cos32).to(torch.bfloat16)
    assert not torch.equal(angles_bf16.float().cos().to(torch.bfloat16), cos16)


def test_rope_stores_no_tensor_a_dtype_cast_could_quantize():
    rope = RopeEmbedding(16, theta=100.0, impl="inv_freq").to(torch.bfloat16)
    assert rope.periods().dtype == torch.float32 and not list(rope.buffers()) and not list(rope.parameters())


def test_rope_refuses_an_unknown_rounding():
    with pytest.raises(ValueError, match=r"^impl must be one of 'periods', 'inv_freq', got 'cat'$"):
        RopeEmbedding(16, theta=100.0, impl="cat")


def test_videomt_rope_is_the_shared_rope_on_its_frames_patch_grid():
    from candidates.videomt import videomt_dinov3_tiny_config
    from candidates.videomt.videomt import RotaryEmbedding

    cfg = videomt_dinov3_tiny_config()
    pixels = _randn(2, 3, 3 * cfg.patch_size, 5 * cfg.patch_size)
    rope = RopeEmbedding(cfg.head_dim, theta=cfg.rope_theta, impl="inv_freq")
    expected = rope((3, 5), dtype=torch.float64, device="cpu")
    for got, want in zip(RotaryEmbedding(cfg)(pixels), expected):
        assert torch.equal(got, want)
