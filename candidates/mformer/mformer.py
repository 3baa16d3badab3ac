"""mFormerV1: a ConvNeXt trunk up to stride 16 feeding RoPE-Mixed ViT blocks.

Components: ConvNeXt (Liu et al., CVPR 2022, https://arxiv.org/abs/2201.03545) and RoPE-Mixed ViT
(Heo et al., ECCV 2024, https://arxiv.org/abs/2403.13298), both from this repository
(``candidates.convnext``, ``candidates.rope_vit``). The parity reference is the same hybrid
assembled from timm 1.0.31's own modules (``reference/mformer.py``).

    stem        ConvNeXt stem, conv 4x4/4 + LayerNorm2d           (B, dims[0], H/4,  W/4)
    stages.0    ConvNeXt stage 0 (no downsample)                  (B, dims[0], H/4,  W/4)
    stages.1    ConvNeXt stage 1 (LayerNorm2d + conv 2x2/2, blocks) (B, dims[1], H/8,  W/8)
    downsample  the "S2 juncture": LayerNorm2d + conv 2x2/2       (B, dims[2], H/16, W/16)
    tokens      flatten row-major, prepend the ViT's CLS token    (B, 1 + H/16 * W/16, dims[2])
    rope        mixed 2D rotary tables on the H/16 x W/16 grid
    blocks      RoPE-Mixed ViT blocks at width dims[2] == embed_dim
    norm, head  final LayerNorm, linear head on the CLS token

The juncture width ``dims[2]`` of the ConvNeXt must equal the RoPE-ViT ``embed_dim``;
:func:`check_juncture` refuses other pairs with one message naming both widths, used by the
constructor, by checkpoint loading and by ``python -m harness compat``.

Weights: :mod:`candidates.mformer.convert` maps a ConvNeXt and a RoPE-ViT checkpoint into one
model (stem, stages 0-1 and the juncture ``stages.2.downsample`` from the first; ``cls_token``,
``rope.freqs``, blocks, norm and head from the second) and recognizes an mFormerV1 state dict;
:mod:`candidates.mformer.assembly` builds the model from two checkpoint files and computes the
compatibility table row.

The configuration (:class:`MFormerConfig`), the juncture check and the designed variants
(:data:`VARIANTS`) live in :mod:`candidates.mformer.config`, which imports no torch; they are
re-exported here.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from candidates.convnext import ConvNeXtStage
from candidates.layers import LayerNorm2d, patch_grid
from candidates.mformer.config import VARIANTS, MFormerConfig, check_juncture  # re-exported
from candidates.rope_vit.rope_vit import Block, MixedRope
from harness.checks import check_choice, check_int, check_type, check_value

__all__ = [
    "MFormerConfig", "MFormerV1", "VARIANTS", "check_juncture", "mformer_v1", "mformer_v1_sm", "mformer_v1_md",
    "mformer_v1_lg", "mformer_v1_xl",
]


class MFormerV1(nn.Module):
    """ConvNeXt stem + stages 0-1 + juncture downsample, then RoPE-Mixed ViT blocks, norm, head."""

    def __init__(self, config: MFormerConfig) -> None:
        super().__init__()
        self.config = check_type("MFormerV1(config)", config, MFormerConfig, what="an MFormerConfig",
                                 fix='build one with MFormerConfig(...) or mformer_v1("sm", ...)')
        cnx, vit = config.convnext, config.vit
        d0, d1, d2 = cnx.dims[:3]
        self.stem = nn.Sequential(nn.Conv2d(cnx.in_chans, d0, kernel_size=4, stride=4), LayerNorm2d(d0))
        self.stages = nn.Sequential(
            ConvNeXtStage(d0, d0, downsample=False, drop_path_rates=[0.0] * cnx.depths[0],
                          layer_scale_init_value=cnx.layer_scale_init_value),
            ConvNeXtStage(d0, d1, downsample=True, drop_path_rates=[0.0] * cnx.depths[1],
                          layer_scale_init_value=cnx.layer_scale_init_value),
        )
        self.downsample = nn.Sequential(LayerNorm2d(d1), nn.Conv2d(d1, d2, kernel_size=2, stride=2))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d2))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.rope = MixedRope(head_dim=vit.head_dim, depth=vit.depth, num_heads=vit.num_heads,
                              temperature=vit.rope_temperature)
        self.blocks = nn.ModuleList(Block(vit) for _ in range(vit.depth))
        self.norm = nn.LayerNorm(d2, eps=vit.norm_eps)
        self.head = nn.Linear(d2, vit.num_classes) if vit.num_classes else nn.Identity()

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        patch_grid("MFormerV1 input", image, in_chans=self.config.convnext.in_chans, stride=16)
        x = self.stem(image)                                                   # (B, d0, H/4, W/4)
        x = self.stages(x)                                                     # (B, d1, H/8, W/8)
        x = self.downsample(x)                                                 # (B, d2, H/16, W/16)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)                                       # (B, N, d2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, d2)
        rope = self.rope(grid)                                                 # (depth, heads, N, 2 * head_dim)
        for block, table in zip(self.blocks, rope):
            x = block(x, table)
        return self.norm(x)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(image)[:, 0])


# ---------------------------------------------------------------------------------------------
# Factories
# ---------------------------------------------------------------------------------------------

def mformer_v1(
    variant: str,
    *,
    convnext_depths: tuple[int, int] | None = None,
    vit_depth: int | None = None,
    num_classes: int | None = None,
) -> MFormerV1:
    """An mFormerV1 variant from the variant table; depths may be reduced (e.g. for tests)."""
    check_choice("mFormerV1 variant", variant, VARIANTS)
    config = VARIANTS[variant]
    if convnext_depths is not None:
        expected = "the depths of ConvNeXt stages 0 and 1, a pair of ints >= 1"
        check_type("convnext_depths", convnext_depths, (tuple, list), what=expected)
        check_value("convnext_depths", convnext_depths, len(convnext_depths) == 2, expected=expected)
        depths = tuple(check_int(f"convnext_depths[{i}]", d, minimum=1) for i, d in enumerate(convnext_depths))
        depths += tuple(config.convnext.depths[2:])
        config = dataclasses.replace(config, convnext=dataclasses.replace(config.convnext, depths=depths))
    vit_overrides = {k: v for k, v in (("depth", vit_depth), ("num_classes", num_classes)) if v is not None}
    if vit_overrides:
        config = dataclasses.replace(config, vit=dataclasses.replace(config.vit, **vit_overrides))
    return MFormerV1(config)


def mformer_v1_sm(**options) -> MFormerV1:
    """ConvNeXt-T trunk (96, 192 -> 384) + RoPE-Mixed ViT-S blocks."""
    return mformer_v1("sm", **options)


def mformer_v1_md(**options) -> MFormerV1:
    """ConvNeXt-S trunk (96, 192 -> 384) + RoPE-Mixed ViT-S blocks (same shape as ``sm``)."""
    return mformer_v1("md", **options)


def mformer_v1_lg(**options) -> MFormerV1:
    """ConvNeXt-L trunk (192, 384 -> 768) + RoPE-Mixed ViT-B blocks."""
    return mformer_v1("lg", **options)


def mformer_v1_xl(**options) -> MFormerV1:
    """ConvNeXt-XL trunk (256, 512 -> 1024) + RoPE-Mixed ViT-L blocks."""
    return mformer_v1("xl", **options)
