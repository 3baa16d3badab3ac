"""RoPE-Mixed ViT: configuration errors, shapes at any grid, rotary properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from candidates.rope_vit import VARIANTS, RopeMixedViT, RopeViTConfig, rope_mixed_vit
from candidates.rope_vit.rope_vit import MixedRope, apply_rotary


def tiny(**overrides):
    options = dict(depth=1, num_classes=7)
    options.update(overrides)
    return rope_mixed_vit("small", **options).eval()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(embed_dim=384, depth=2, num_heads=5),
         r"^RopeViTConfig.num_heads must be a divisor of embed_dim 384, got 5$"),
        (dict(embed_dim=36, depth=2, num_heads=6),
         r"^RopeViTConfig.num_heads must be a count leaving head_dim = 36 / num_heads divisible by 4, got 6; "),
        (dict(embed_dim=384, depth=0, num_heads=6), r"^RopeViTConfig.depth must be an int >= 1, got 0$"),
        (dict(embed_dim=384, depth=2, num_heads=6, num_classes=-1),
         r"^RopeViTConfig.num_classes must be an int >= 0, got -1; 0 leaves the head out$"),
    ],
)
def test_config_rejects_bad_shapes(fields, message):
    with pytest.raises(ValueError, match=message):
        RopeViTConfig(**fields)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_classes", True, r"^RopeViTConfig.num_classes must be an int >= 0, got bool True; "),
        ("num_classes", 2.0, r"^RopeViTConfig.num_classes must be an int >= 0, got float 2.0; "),
        ("mlp_ratio", "4", r"^RopeViTConfig.mlp_ratio must be a finite number > 0, got str '4'$"),
        ("mlp_ratio", True, r"^RopeViTConfig.mlp_ratio must be a finite number > 0, got bool True$"),
        ("norm_eps", None, r"^RopeViTConfig.norm_eps must be a finite number > 0, got NoneType None$"),
        ("layer_scale_init", "1e-5", r"^RopeViTConfig.layer_scale_init must be a finite number, got str '1e-5'$"),
        ("layer_scale_init", False, r"^RopeViTConfig.layer_scale_init must be a finite number, got bool False$"),
        ("rope_temperature", torch.tensor(10.0), r"^RopeViTConfig.rope_temperature must be a finite number > 0, "
                                                 r"got Tensor tensor\(10.\)$"),
    ],
)
def test_config_rejects_wrong_types_as_type_errors(field, value, message):
    with pytest.raises(TypeError, match=message):
        RopeViTConfig(embed_dim=384, depth=2, num_heads=6, **{field: value})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mlp_ratio", 0.0, r"^RopeViTConfig.mlp_ratio must be a finite number > 0, got 0.0$"),
        ("mlp_ratio", 1e-4, r"^RopeViTConfig.mlp_ratio must be a ratio leaving int\(mlp_ratio \* 384\) >= 1 MLP units, "
                            r"got 0.0001$"),
        ("norm_eps", -1e-6, r"^RopeViTConfig.norm_eps must be a finite number > 0, got -1e-06$"),
        ("norm_eps", float("nan"), r"^RopeViTConfig.norm_eps must be a finite number > 0, got nan$"),
        ("layer_scale_init", float("inf"), r"^RopeViTConfig.layer_scale_init must be a finite number, got inf$"),
    ],
)
def test_config_rejects_out_of_range_numbers_as_value_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        RopeViTConfig(embed_dim=384, depth=2, num_heads=6, **{field: value})


def test_config_accepts_ints_for_the_real_options():
    config = RopeViTConfig(embed_dim=384, depth=1, num_heads=6, mlp_ratio=2, layer_scale_init=1, num_classes=0)
    assert (config.mlp_ratio, config.layer_scale_init) == (2.0, 1.0) and type(config.layer_scale_init) is float
    block = rope_mixed_vit("small", **config.__dict__).blocks[0]
    assert block.mlp.fc1.out_features == 768 and block.gamma_1.dtype == torch.float32


def test_variants_are_read_only():
    with pytest.raises(TypeError, match="does not support item assignment"):
        VARIANTS["huge"] = VARIANTS["large"]
    assert sorted(VARIANTS) == ["base", "large", "small"]


def test_an_unknown_variant_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"^RoPE-ViT variant must be one of 'small', 'base', 'large', got 'huge'$"):
        rope_mixed_vit("huge")


def test_a_misspelled_variant_names_the_closest_one():
    with pytest.raises(ValueError, match=r"got 'smal'; did you mean 'small'\?$"):
        rope_mixed_vit("smal")


def test_the_model_rejects_a_non_config_as_a_type_error():
    with pytest.raises(TypeError, match=r"^RopeMixedViT\(config\) must be a RopeViTConfig, got dict \{\}; build one"):
        RopeMixedViT({})


@pytest.mark.parametrize("size", [(224, 224), (48, 80), (96, 32), (16, 16)])
def test_forward_any_multiple_of_the_patch(size):
    model = tiny()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, *size))
        features = model.forward_features(torch.randn(1, 3, *size))
    assert logits.shape == (2, 7)
    assert features.shape == (1, 1 + (size[0] // 16) * (size[1] // 16), 384)


def test_image_sides_must_be_multiples_of_the_patch():
    with pytest.raises(ValueError, match=r"^RopeMixedViT input shape must be \(B, 3, H, W\) with H, W multiples of 16, "
                                         r"got \(1, 3, 50, 64\); resize or pad the image to multiples of 16 pixels$"):
        tiny()(torch.randn(1, 3, 50, 64))


def test_image_channels_must_match_the_config():
    with pytest.raises(ValueError, match=r"^RopeMixedViT input shape must be \(B, 3, H, W\) with H, W multiples of 16, "
                                         r"got \(1, 1, 32, 32\)$"):
        tiny()(torch.randn(1, 1, 32, 32))


def test_a_non_tensor_image_is_a_type_error():
    with pytest.raises(TypeError, match=r"^RopeMixedViT input must be a Tensor, got list \[0.0\]$"):
        tiny()([0.0])


def test_rope_table_layout_and_grid_order():
    rope = MixedRope(head_dim=8, depth=2, num_heads=3, temperature=10.0)
    table = rope((2, 3))
    assert table.shape == (2, 3, 6, 16)
    sin, cos = table.chunk(2, dim=-1)
    # token 4 sits at row 1, column 1 (row-major, like the patch embedding's flatten)
    f_x, f_y = rope.freqs.detach()
    expected = (1 * f_x + 1 * f_y).repeat_interleave(2, -1)
    torch.testing.assert_close(sin[:, :, 4], expected.sin())
    torch.testing.assert_close(cos[:, :, 4], expected.cos())
    # token 2 sits at row 0, column 2: only the x frequencies contribute
    torch.testing.assert_close(sin[:, :, 2], (2 * f_x).repeat_interleave(2, -1).sin())


@pytest.mark.property
@settings(deadline=None)
@given(
    rows=st.integers(1, 5), cols=st.integers(1, 5),
    shift_r=st.integers(0, 3), shift_c=st.integers(0, 3), seed=st.integers(0, 2**16),
)
def test_rotated_scores_depend_only_on_relative_position(rows, cols, shift_r, shift_c, seed):
    """q_m . k_n after rotation is a function of (m - n): shifting both tokens leaves it unchanged."""
    torch.manual_seed(seed)
    rope = MixedRope(head_dim=8, depth=1, num_heads=2, temperature=10.0).double()
    with torch.no_grad():
        rope.freqs.normal_()
    big = rope((rows + shift_r, cols + shift_c))[0]                 # (heads, N, 16)
    q, k = torch.randn(2, 1, 8, dtype=torch.float64), torch.randn(2, 1, 8, dtype=torch.float64)

    def score(r_q, c_q, r_k, c_k):
        index_q, index_k = r_q * (cols + shift_c) + c_q, r_k * (cols + shift_c) + c_k
        q_rot = apply_rotary(q, big[:, index_q:index_q + 1])
        k_rot = apply_rotary(k, big[:, index_k:index_k + 1])
        return (q_rot * k_rot).sum(-1)

    base = score(rows - 1, cols - 1, 0, 0)
    shifted = score(rows - 1 + shift_r, cols - 1 + shift_c, shift_r, shift_c)
    torch.testing.assert_close(base, shifted, atol=1e-5, rtol=1e-5)  # float32 angles (see module docstring)


def test_rotation_keeps_every_pair_norm():
    rope = MixedRope(head_dim=64, depth=1, num_heads=6, temperature=10.0)
    x = torch.randn(1, 6, 4, 64)                                     # (B, heads, N, head_dim)
    rotated = apply_rotary(x, rope((2, 2))[0].detach())
    torch.testing.assert_close(rotated.unflatten(-1, (-1, 2)).norm(dim=-1), x.unflatten(-1, (-1, 2)).norm(dim=-1))
    assert not torch.allclose(rotated, x)


def test_zero_frequencies_make_rope_the_identity():
    model = tiny()
    with torch.no_grad():
        model.rope.freqs.zero_()
    table = model.rope((3, 2))
    x = torch.randn(1, 6, 6, 64)
    torch.testing.assert_close(apply_rotary(x, table[0]), x)
