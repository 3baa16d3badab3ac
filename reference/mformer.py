"""Reference mFormerV1 assembled from timm's own modules, and the ``mformer_v1_*`` pairs.

timm has no mFormer; the reference hybrid takes timm 1.0.31's ConvNeXt ``stem``, ``stages[0]``,
``stages[1]`` and ``stages[2].downsample`` (``timm/models/convnext.py``) and timm's RoPE-Mixed
ViT ``cls_token``, ``rope`` (``RotaryEmbeddingMixed``), ``blocks`` (``EvaBlock``), ``norm`` and
``head`` (``timm/models/eva.py``), wired exactly as described in ``candidates/mformer``. The ViT
is created at the input size, so timm's cached rotary grid is the H/16 x W/16 feature grid.

Pairs: ``mformer_v1_{sm,md,lg,xl}`` (full depth, 224x224; md/lg/xl nightly) and
``mformer_v1_{sm,md,lg,xl}_tiny`` (1 + 1 ConvNeXt blocks, 2 ViT blocks, 64x96, batch 2). The
reference's names are the candidate's, so the transfer is the identity
(:func:`candidates.mformer.convert.convert_timm_state_dict`).

The ``compat`` command, which checks a ConvNeXt / RoPE-ViT checkpoint pair without building
anything, is in :mod:`reference.inspect_cli` with the other checkpoint command.
"""

from __future__ import annotations

import torch
from torch import nn

from harness import Pair, register

from candidates.mformer import VARIANTS, mformer_v1
from candidates.mformer.convert import convert_timm_state_dict
from reference.rope_vit import TIMM_NAMES, expose_rope_table, pin_eager_attention, randomize_rope_vit_

__all__ = ["TimmMFormerV1", "timm_mformer_v1"]

VIT_VARIANT = {"sm": "small", "md": "small", "lg": "base", "xl": "large"}
TINY_SIZE = (64, 96)


class TimmMFormerV1(nn.Module):
    """The hybrid from timm modules: ConvNeXt trunk to stride 16, then timm Eva blocks with mixed RoPE."""

    def __init__(self, convnext: nn.Module, vit: nn.Module) -> None:
        super().__init__()
        self.stem = convnext.stem
        self.stages = nn.Sequential(convnext.stages[0], convnext.stages[1])
        self.downsample = convnext.stages[2].downsample
        self.cls_token = vit.cls_token
        self.rope = vit.rope
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.head = vit.head

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.downsample(self.stages(self.stem(image)))                    # (B, C, H/16, W/16)
        x = x.flatten(2).transpose(1, 2)                                       # (B, N, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        rope = self.rope.get_embed()                                           # (depth, heads, N, 2 * head_dim)
        for i, block in enumerate(self.blocks):
            x = block(x, rope=rope[i])
        x = self.norm(x)
        return self.head(x[:, 0])


def timm_mformer_v1(
    variant: str, *, img_size: tuple[int, int] = (224, 224),
    convnext_depths: tuple[int, int] | None = None, vit_depth: int | None = None,
) -> TimmMFormerV1:
    cnx_extra = {}
    if convnext_depths is not None:
        # stages 2-3 are discarded (only stage 2's downsample is used): no blocks keeps them cheap
        cnx_extra["depths"] = (*convnext_depths, 0, 0)
    import timm  # here, not at the top: the family's CLI command needs no model library

    convnext = timm.create_model(VARIANTS[variant].convnext_name, pretrained=False, **cnx_extra)
    vit_extra = {} if vit_depth is None else {"depth": vit_depth}
    vit = timm.create_model(TIMM_NAMES[VIT_VARIANT[variant]], pretrained=False, img_size=img_size, **vit_extra)
    pin_eager_attention(vit)
    expose_rope_table(vit.rope)
    return TimmMFormerV1(convnext, vit).eval()


def _register(variant: str, *, tiny: bool) -> None:
    size = TINY_SIZE if tiny else (224, 224)
    depths = {"convnext_depths": (1, 1), "vit_depth": 2} if tiny else {}
    config = VARIANTS[variant]
    register(Pair(
        name=f"mformer_v1_{variant}" + ("_tiny" if tiny else ""),
        candidate=lambda: mformer_v1(variant, **depths),
        reference=lambda: timm_mformer_v1(variant, img_size=size, **depths),
        convert=convert_timm_state_dict,
        make_inputs=lambda g: torch.randn(2 if tiny else 1, 3, *size, generator=g),
        randomize_fn=randomize_rope_vit_,
        tags=frozenset() if tiny or variant == "sm" else frozenset({"nightly"}),
        description=f"mFormerV1-{variant}: {config.convnext_name} + {config.vit_name}"
                    + (" (1+1 ConvNeXt blocks, 2 ViT blocks, 64x96)" if tiny else ", 224x224"),
    ))


for _variant in VARIANTS:
    _register(_variant, tiny=False)
    _register(_variant, tiny=True)
