"""mFormerV1: published variants, juncture check, shapes, parameter counts (meta device)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from candidates.convnext import VARIANTS as CONVNEXT_VARIANTS
from candidates.mformer import VARIANTS, MFormerConfig, MFormerV1, check_juncture, mformer_v1
from candidates.rope_vit import VARIANTS as ROPE_VIT_VARIANTS


def test_variants_pair_the_seed_checkpoints():
    pairs = {name: (c.convnext_name, c.vit_name, c.convnext.dims, c.vit.embed_dim) for name, c in VARIANTS.items()}
    assert pairs == {
        "sm": ("convnext_tiny", "rope_mixed_deit_small_patch16_LS", (96, 192, 384, 768), 384),
        "md": ("convnext_small", "rope_mixed_deit_small_patch16_LS", (96, 192, 384, 768), 384),
        "lg": ("convnext_large", "rope_mixed_deit_base_patch16_LS", (192, 384, 768, 1536), 768),
        "xl": ("convnext_xlarge", "rope_mixed_deit_large_patch16_LS", (256, 512, 1024, 2048), 1024),
    }


def test_incompatible_pair_is_refused_naming_both_widths():
    with pytest.raises(ValueError, match=r"S2 juncture is 384 \(dims=\[96, 192, 384, 768\]\) but the RoPE-ViT input width \(embed_dim\) is 768"):
        MFormerConfig(CONVNEXT_VARIANTS["tiny"], ROPE_VIT_VARIANTS["base"])


def test_a_convnext_config_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match=r"^MFormerConfig.convnext must be a ConvNeXtConfig, got dict \{\}$"):
        MFormerConfig({}, ROPE_VIT_VARIANTS["small"])


def test_a_vit_config_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match=r"^MFormerConfig.vit must be a RopeViTConfig, got NoneType None$"):
        MFormerConfig(CONVNEXT_VARIANTS["tiny"], None)


def test_a_checkpoint_name_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match=r"^MFormerConfig.vit_name must be a str, got int 3$"):
        MFormerConfig(CONVNEXT_VARIANTS["tiny"], ROPE_VIT_VARIANTS["small"], "convnext_tiny", 3)


def test_a_vit_patch_size_other_than_the_juncture_stride_is_refused():
    vit = dataclasses.replace(ROPE_VIT_VARIANTS["small"], patch_size=8)
    with pytest.raises(ValueError, match=r"^MFormerConfig.vit.patch_size must be 16 \(the token grid is the juncture's "
                                         r"stride-16 grid\), got 8$"):
        MFormerConfig(CONVNEXT_VARIANTS["tiny"], vit)


def test_the_model_rejects_a_non_config_as_a_type_error():
    with pytest.raises(TypeError, match=r"^MFormerV1\(config\) must be an MFormerConfig, got str 'sm'; build one with"):
        MFormerV1("sm")


def test_an_unknown_variant_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"^mFormerV1 variant must be one of 'sm', 'md', 'lg', 'xl', got 'xs'$"):
        mformer_v1("xs")


@pytest.mark.parametrize(("depths", "error", "message"), [
    ((1, 1, 1), ValueError, r"^convnext_depths must be the depths of ConvNeXt stages 0 and 1, a pair of ints >= 1, "
                            r"got \(1, 1, 1\)$"),
    (2, TypeError, r"^convnext_depths must be the depths of ConvNeXt stages 0 and 1, .* got int 2$"),
    ((1, 0), ValueError, r"^convnext_depths\[1\] must be an int >= 1, got 0$"),
    ((1, 1.0), TypeError, r"^convnext_depths\[1\] must be an int >= 1, got float 1.0$"),
])
def test_reduced_convnext_depths_are_checked(depths, error, message):
    with pytest.raises(error, match=message):
        mformer_v1("sm", convnext_depths=depths, vit_depth=1)


def test_the_juncture_needs_three_convnext_stages():
    with pytest.raises(ValueError, match=r"^ConvNeXt dims must be the widths of at least 3 stages \(the S2 juncture is "
                                         r"dims\[2\]\), got \(96, 192\)$"):
        check_juncture((96, 192), 384)


@pytest.mark.parametrize("size", [(64, 96), (32, 32), (48, 16)])
def test_forward_shapes_on_the_stride_16_grid(size):
    model = mformer_v1("sm", convnext_depths=(1, 1), vit_depth=1, num_classes=3).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 3, *size))
        logits = model(torch.randn(2, 3, *size))
    assert features.shape == (2, 1 + (size[0] // 16) * (size[1] // 16), 384)
    assert logits.shape == (2, 3)


def test_sides_must_be_multiples_of_16():
    model = mformer_v1("sm", convnext_depths=(1, 1), vit_depth=1)
    with pytest.raises(ValueError, match=r"^MFormerV1 input shape must be \(B, 3, H, W\) with H, W multiples of 16, "
                                         r"got \(1, 3, 40, 32\); resize or pad the image to multiples of 16 pixels$"):
        model(torch.randn(1, 3, 40, 32))


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (3, 32, 32)])
def test_input_channels_and_rank_are_checked(shape):
    model = mformer_v1("sm", convnext_depths=(1, 1), vit_depth=1)
    with pytest.raises(ValueError, match=r"^MFormerV1 input shape must be \(B, 3, H, W\) with H, W multiples of 16, "
                                         rf"got {re.escape(str(shape))}$"):
        model.forward_features(torch.randn(*shape))


def test_a_non_tensor_input_is_a_type_error():
    model = mformer_v1("sm", convnext_depths=(1, 1), vit_depth=1)
    with pytest.raises(TypeError, match=r"^MFormerV1 input must be a Tensor, got list \[\]$"):
        model([])


def test_variants_are_read_only():
    with pytest.raises(TypeError, match="does not support item assignment"):
        VARIANTS["xs"] = VARIANTS["sm"]
    assert sorted(VARIANTS) == ["lg", "md", "sm", "xl"]


def _count(variant: str) -> dict[str, int]:
    with torch.device("meta"):
        model = mformer_v1(variant)
    parts = {"convnext": ("stem", "stages", "downsample"), "vit": ("cls_token", "rope", "blocks", "norm", "head")}
    counts = {part: sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in prefixes)
              for part, prefixes in parts.items()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


@pytest.mark.golden
def test_parameter_counts_of_the_four_variants(golden):
    counts = {variant: _count(variant) for variant in VARIANTS}
    golden("mformer_param_counts", counts)
    # ConvNeXt-S differs from ConvNeXt-T only in stage 2 depth, which the hybrid drops
    assert counts["sm"] == counts["md"]
    for variant, config in VARIANTS.items():
        d0, d1, d2 = config.convnext.dims[:3]
        stem = 3 * d0 * 16 + d0 + 2 * d0
        block = lambda d: d * 49 + d + 2 * d + 8 * d * d + 5 * d + d   # dwconv, norm, mlp, gamma
        downsample = lambda a, b: 2 * a + 4 * a * b + b
        convnext = stem + 3 * block(d0) + downsample(d0, d1) + 3 * block(d1) + downsample(d1, d2)
        assert counts[variant]["convnext"] == convnext, variant


def test_mformer_is_an_nn_module_with_reference_names():
    model = mformer_v1("sm", convnext_depths=(1, 1), vit_depth=1)
    names = {n for n, _ in model.named_modules()}
    assert {"stem.0", "stages.1.downsample.1", "stages.1.blocks.0.conv_dw", "downsample.0", "downsample.1",
            "rope", "blocks.0.attn.qkv", "norm", "head"} <= names
    assert isinstance(model, MFormerV1)
    assert dataclasses.is_dataclass(model.config)
