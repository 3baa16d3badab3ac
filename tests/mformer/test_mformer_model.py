"""mFormerV1: published variants, juncture check, shapes, parameter counts (meta device)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from candidates.convnext import VARIANTS as CONVNEXT_VARIANTS
from candidates.mformer import VARIANTS, MFormerConfig, MFormerV1, mformer_v1
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


def test_config_types_are_checked():
    with pytest.raises(TypeError, match=r"convnext must be a ConvNeXtConfig, got dict"):
        MFormerConfig({}, ROPE_VIT_VARIANTS["small"])
    with pytest.raises(ValueError, match=r"unknown mFormerV1 variant 'xs'; expected one of \['lg', 'md', 'sm', 'xl'\]"):
        mformer_v1("xs")


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
    with pytest.raises(ValueError, match=r"H, W multiples of 16, got \(1, 3, 40, 32\)"):
        model(torch.randn(1, 3, 40, 32))


def test_input_channels_are_checked():
    model = mformer_v1("sm", convnext_depths=(1, 1), vit_depth=1)
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\), got shape \(2, 1, 32, 32\)"):
        model.forward_features(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\), got shape \(3, 32, 32\)"):
        model(torch.randn(3, 32, 32))


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
