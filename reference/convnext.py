"""timm ConvNeXt as the reference for ``candidates.convnext``, and the ConvNeXt pairs.

Pairs (default suite, small inputs so a float64 run takes seconds):

* ``convnext_{tiny,small}``: ``timm.create_model("convnext_*", pretrained=False)`` with 1000
  classes and the variant's drop-path rate (inactive in eval mode, but it gives both sides the
  same ``drop_path`` modules), at full depth: the two depth tables there are, (3, 3, 9, 3) and
  (3, 3, 27, 3). Tiny sees 2x3x128x128, Small 1x3x128x128.
* ``convnext_{base,large,xlarge}_d2``: Base, Large and XLarge at every width they have (stem, four
  stages, downsamples, head) with two blocks per stage, on 1x3x128x128. Their depths are Small's;
  at full depth they hold 88M/198M/350M parameters, whose upstream initialization alone costs more
  than a default-suite pair may. Two blocks per stage check the hand-over from block to block.
* ``convnext_{variant}_stage3_block``: one ConvNeXt block at the variant's stage-3 width against
  timm's ``ConvNeXtBlock`` on a 1 x dims[3] x 7 x 7 map, the stage-3 map of a 224 input: every
  output pixel sees the 7x7 depthwise kernel clipped by the border, the centre pixel all 49 taps.
* ``convnext_tiny_cifar``: the CIFAR stem (3x3 conv, stride 1, padding 1 + LayerNorm2d) on
  1x3x32x32, 10 classes. timm has no such stem, so the reference is timm's ``convnext_tiny`` with
  ``model.stem`` replaced by the same two layers built from timm's own parts (``nn.Conv2d`` and
  ``timm.layers.LayerNorm2d``); every other module is timm's.

Which depthwise taps an input exercises. A 7x7 kernel with padding 3 on an s x s map uses tap
offset d (-3..3) at some output pixel iff |d| < s: a map of side >= 4 exercises all 49 taps, side 2
the central 3x3, side 1 the centre only. Stage i of the ImageNet stem sees side H / 2^(i+2):

    input   stage 0  stage 1  stage 2  stage 3    taps exercised
    128     32       16       8        4          all 49 in every stage          (every default pair)
    32      8        4        2        1          49, 49, central 9, centre 1     (nightly full-depth L, XL)

``tests/convnext/test_convnext_parity.py`` checks this table against gradients.

Nightly pairs (tag ``nightly``): ``convnext_base`` at full depth on 1x3x128x128,
``convnext_{large,xlarge}`` at full depth on 1x3x32x32 (the smallest input the patchify stem and
three downsamples allow), and the paper's full resolutions:
``convnext_*_224`` all five variants at 1x3x224x224, ``convnext_{tiny,small,base}_384`` at
1x3x384x384. Peak host memory of a float64 comparison of ``convnext_xlarge_224``: 4.0 GiB as
``compare`` runs by default (trace copies beyond 256 MiB per trace spilled to files), 4.4 GiB
with ``--no-spill`` (the two models share one copy of the weights, see
``Pair.build(share_weights=True)``).

Weights: the candidate's parameter names and shapes are timm's, so the transfer is the identity
``convert_timm_state_dict`` of :mod:`candidates.convnext.convert`, which also holds the original
release's table (loaded strictly by ``Pair.build``). Module names match too, hence no
rename rules; timm's no-op modules (``mlp.drop1/norm/drop2``, ``shortcut``, ``norm_pre``,
``head.global_pool/flatten/pre_logits/drop``) have no candidate twin and are listed as unmatched.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import timm
import torch
from timm.layers import LayerNorm2d
from timm.models.convnext import ConvNeXtBlock as TimmConvNeXtBlock
from torch import nn

import candidates.convnext as convnext
from harness import Pair, register

__all__ = ["timm_convnext", "timm_convnext_cifar", "variant_pair", "reduced_depth_pair", "stage3_block_pair"]

IMAGENET_CLASSES = 1000
CIFAR_CLASSES = 10
SMALL_INPUTS: dict[str, tuple[int, int, int, int]] = {  # see the docstring's tap table
    "tiny": (2, 3, 128, 128),
    "small": (1, 3, 128, 128),
    "base": (1, 3, 128, 128),
    "large": (1, 3, 32, 32),
    "xlarge": (1, 3, 32, 32),
}
FULL_DEPTH_IN_NIGHTLY = ("base", "large", "xlarge")  # by default at REDUCED_DEPTHS: see the docstring
REDUCED_DEPTHS = (2, 2, 2, 2)
REDUCED_INPUT = (1, 3, 128, 128)
STAGE3_MAP = 7  # the stage-3 map side of a 224 input
FULL_SIZE_INPUTS = {"_224": (1, 3, 224, 224), "_384": (1, 3, 384, 384)}
# 384x384 float64 traces of Large/XLarge need well over 16 GB of host memory: 224 only for those.
FULL_SIZE_VARIANTS = {"_224": tuple(SMALL_INPUTS), "_384": ("tiny", "small", "base")}
NIGHTLY = frozenset({"nightly"})
CIFAR_INPUT = (1, 3, 32, 32)


def timm_convnext(variant: str, *, num_classes: int = IMAGENET_CLASSES, **overrides: Any) -> nn.Module:
    """timm's ``convnext_<variant>``, random init, eval mode, same drop-path rate as ours;
    ``overrides``: further timm ConvNeXt arguments (``depths=``)."""
    model = timm.create_model(
        f"convnext_{variant}",
        pretrained=False,
        num_classes=num_classes,
        drop_path_rate=convnext.VARIANTS[variant].drop_path_rate,
        **overrides,
    )
    return model.eval()


def timm_convnext_cifar(*, num_classes: int = CIFAR_CLASSES) -> nn.Module:
    """timm's ``convnext_tiny`` with the CIFAR stem: conv 3x3/1 (padding 1) + timm LayerNorm2d."""
    model = timm_convnext("tiny", num_classes=num_classes)
    in_chans, dim = model.stem[0].in_channels, model.stem[0].out_channels
    model.stem = nn.Sequential(
        nn.Conv2d(in_chans, dim, kernel_size=3, stride=1, padding=1),
        LayerNorm2d(dim),
    )
    return model.eval()


def _images(shape: tuple[int, ...]) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda generator: torch.randn(shape, generator=generator)


def variant_pair(variant: str, *, suffix: str, input_shape: tuple[int, ...], tags: frozenset[str]) -> Pair:
    """``convnext_<variant><suffix>``: our factory against timm's, on ``input_shape`` images."""
    factory = getattr(convnext, f"convnext_{variant}")
    return Pair(
        name=f"convnext_{variant}{suffix}",
        candidate=lambda: factory(num_classes=IMAGENET_CLASSES),
        reference=lambda: timm_convnext(variant),
        convert=convnext.convert_timm_state_dict,
        make_inputs=_images(input_shape),
        tags=tags,
        description=f"ConvNeXt-{variant} vs timm convnext_{variant}, input {'x'.join(map(str, input_shape))}",
    )


def reduced_depth_pair(variant: str) -> Pair:
    """``convnext_<variant>_d2``: every width of the variant, two blocks per stage, on 128x128."""
    config = replace(convnext.VARIANTS[variant], depths=REDUCED_DEPTHS, num_classes=IMAGENET_CLASSES)
    return Pair(
        name=f"convnext_{variant}_d2",
        candidate=lambda: convnext.ConvNeXt(config),
        reference=lambda: timm_convnext(variant, depths=REDUCED_DEPTHS),
        convert=convnext.convert_timm_state_dict,
        make_inputs=_images(REDUCED_INPUT),
        description=f"ConvNeXt-{variant} widths, 2 blocks per stage, vs timm convnext_{variant} "
                    f"with depths={REDUCED_DEPTHS}, input {'x'.join(map(str, REDUCED_INPUT))}",
    )


def stage3_block_pair(variant: str) -> Pair:
    """``convnext_<variant>_stage3_block``: one block at the stage-3 width on a 7x7 map."""
    config = convnext.VARIANTS[variant]
    dim = config.dims[3]
    shape = (1, dim, STAGE3_MAP, STAGE3_MAP)
    return Pair(
        name=f"convnext_{variant}_stage3_block",
        candidate=lambda: convnext.ConvNeXtBlock(dim, layer_scale_init_value=config.layer_scale_init_value),
        reference=lambda: TimmConvNeXtBlock(dim, ls_init_value=config.layer_scale_init_value).eval(),
        convert=convnext.convert_timm_state_dict,
        make_inputs=_images(shape),
        description=f"ConvNeXt-{variant} stage-3 block (width {dim}) vs timm ConvNeXtBlock on a "
                    f"{STAGE3_MAP}x{STAGE3_MAP} map: all 49 depthwise taps",
    )


for _variant, _shape in SMALL_INPUTS.items():
    register(variant_pair(_variant, suffix="", input_shape=_shape,
                          tags=NIGHTLY if _variant in FULL_DEPTH_IN_NIGHTLY else frozenset()))
    register(stage3_block_pair(_variant))
    if _variant in FULL_DEPTH_IN_NIGHTLY:
        register(reduced_depth_pair(_variant))
    for _suffix, _full_shape in FULL_SIZE_INPUTS.items():
        if _variant in FULL_SIZE_VARIANTS[_suffix]:
            register(variant_pair(_variant, suffix=_suffix, input_shape=_full_shape, tags=NIGHTLY))

register(Pair(
    name="convnext_tiny_cifar",
    candidate=lambda: convnext.convnext_tiny(num_classes=CIFAR_CLASSES, use_cifar_stem=True),
    reference=timm_convnext_cifar,
    convert=convnext.convert_timm_state_dict,
    make_inputs=_images(CIFAR_INPUT),
    description="ConvNeXt-T with the 3x3/1 CIFAR stem vs timm convnext_tiny with that stem swapped in",
))
