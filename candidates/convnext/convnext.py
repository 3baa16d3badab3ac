"""ConvNeXt: a pure convolutional network modernised along the lines of a vision Transformer.

Paper: Liu et al., "A ConvNet for the 2020s", CVPR 2022, https://arxiv.org/abs/2201.03545.
Upstream: https://github.com/facebookresearch/ConvNeXt and timm's ``timm/models/convnext.py``
(timm 1.0.31), which is the parity reference (``reference/convnext.py``).

Structure (stage ``i`` has ``depths[i]`` blocks of width ``dims[i]``)::

    stem      conv 4x4/4 + LayerNorm2d          (CIFAR: conv 3x3/1 pad 1 + LayerNorm2d)
    stages.i  downsample (LayerNorm2d + conv 2x2/2; identity in stage 0) -> blocks
    block     x + drop_path(gamma * fc2(GELU(fc1(LayerNorm(dwconv7x7(x))))))   (MLP channels-last)
    head      global mean pool -> LayerNorm -> fc

Every submodule and parameter carries timm's name (``stem.0``, ``stages.1.downsample.1``,
``stages.2.blocks.4.mlp.fc1``, ``gamma``, ``head.norm``, ``head.fc``), so state dicts move
between the two implementations unchanged and the parity harness lines layers up by name.

Deliberate differences from timm:

* Only the paper's model: patch/CIFAR stems, LayerNorm, exact GELU, Linear MLP, layer scale
  always on. No conv-MLP, GRN (ConvNeXt-V2), dilation, output stride or MLP head options.
* No-op modules that timm keeps for its options are not mirrored (``mlp.drop1/norm/drop2``,
  block ``shortcut``, ``norm_pre``, ``head.global_pool/flatten/pre_logits/drop``); global pooling
  is an inline mean. The head norm is a LayerNorm2d over the pooled ``(B, C, 1, 1)`` map, as in
  timm, so that ``head.norm`` produces the same shape on both sides.
* Truncated-normal init is truncated at +-2 standard deviations. Upstream passes timm's default
  bounds of +-2 *absolute*, which at std 0.02 is +-100 sigma and truncates nothing.
* The CIFAR stem (3x3, stride 1, padding 1) keeps 32x32 inputs at full resolution in stage 0;
  it is not part of the paper or of timm.

The configuration (:class:`ConvNeXtConfig`) and the released variants (:data:`VARIANTS`) live in
:mod:`candidates.convnext.config`, which imports no torch; they are re-exported here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from candidates.convnext.config import VARIANTS, ConvNeXtConfig, check_drop_rate  # re-exported
from candidates.layers import LayerNorm2d, Mlp  # re-exported: candidates.convnext.LayerNorm2d, .Mlp
from harness.checks import check_choice, check_type, value_error

__all__ = [
    "ConvNeXt", "ConvNeXtBlock", "ConvNeXtConfig", "ConvNeXtStage", "DropPath", "LayerNorm2d",
    "Mlp", "VARIANTS", "convnext_base", "convnext_large", "create_convnext",
    "convnext_small", "convnext_tiny", "convnext_xlarge",
]

LAYER_NORM_EPS = 1e-6  # the paper's (and timm's) LayerNorm epsilon, everywhere in the network
INIT_STD = 0.02


# ---------------------------------------------------------------------------------------------
# Leaf modules
# ---------------------------------------------------------------------------------------------


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability ``drop_prob``.

    Kept branches are scaled by ``1 / (1 - drop_prob)`` so the expectation is unchanged; in eval
    mode (and at ``drop_prob == 0``) the module is the identity.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = check_drop_rate("DropPath.drop_prob", drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # one draw per sample
        mask = x.new_empty(mask_shape).bernoulli_(keep_prob)
        return x * mask / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


# ---------------------------------------------------------------------------------------------
# Block, stage, head, model
# ---------------------------------------------------------------------------------------------


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv -> LayerNorm -> MLP (ratio 4) -> layer scale -> drop path, plus residual."""

    def __init__(self, dim: int, *, drop_path: float = 0.0, layer_scale_init_value: float = 1e-6) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, 4 * dim)  # exact (erf) GELU, as in the paper
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init_value))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.conv_dw(x)
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C): norm and MLP act on the channel axis
        x = self.norm(x)
        x = self.mlp(x)
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W)
        x = x * self.gamma.view(1, -1, 1, 1)
        return shortcut + self.drop_path(x)


class ConvNeXtStage(nn.Module):
    """Optional downsample (LayerNorm2d + 2x2 stride-2 conv), then one block per drop-path rate."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        downsample: bool,
        drop_path_rates: Sequence[float],
        layer_scale_init_value: float,
    ) -> None:
        super().__init__()
        if downsample:
            self.downsample = nn.Sequential(
                LayerNorm2d(in_dim),
                nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2),
            )
        else:
            assert in_dim == out_dim, "a stage without downsample keeps its width"
            self.downsample = nn.Identity()  # stage 0: the stem already produced dims[0] channels
        self.blocks = nn.Sequential(*(
            ConvNeXtBlock(out_dim, drop_path=rate, layer_scale_init_value=layer_scale_init_value)
            for rate in drop_path_rates
        ))

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        return self.blocks(x)


class ClassifierHead(nn.Module):
    """Global average pool -> LayerNorm -> Linear."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        x = self.norm(x)
        x = x.flatten(1)  # (B, C)
        return self.fc(x)


class ConvNeXt(nn.Module):
    """ConvNeXt image classifier: ``(B, in_chans, H, W) -> (B, num_classes)`` logits."""

    def __init__(self, config: ConvNeXtConfig = ConvNeXtConfig()) -> None:
        super().__init__()
        self.config = check_type("ConvNeXt(config)", config, ConvNeXtConfig,
                                 fix="build one with ConvNeXtConfig(...) or use a factory such as convnext_tiny()")
        dims = config.dims
        if config.use_cifar_stem:
            stem_conv = nn.Conv2d(config.in_chans, dims[0], kernel_size=3, stride=1, padding=1)
        else:
            stem_conv = nn.Conv2d(config.in_chans, dims[0], kernel_size=4, stride=4)
        self.stem = nn.Sequential(stem_conv, LayerNorm2d(dims[0]))
        in_dims = (dims[0],) + dims[:-1]
        self.stages = nn.Sequential(*(
            ConvNeXtStage(
                in_dim,
                out_dim,
                downsample=i > 0,
                drop_path_rates=rates,
                layer_scale_init_value=config.layer_scale_init_value,
            )
            for i, (in_dim, out_dim, rates) in enumerate(zip(in_dims, dims, config.drop_path_rates()))
        ))
        self.head = ClassifierHead(dims[-1], config.num_classes)
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        x = self.stem(x)  # (B, dims[0], H/4, W/4); CIFAR stem: (B, dims[0], H, W)
        x = self.stages(x)  # (B, dims[3], H/32, W/32); CIFAR stem: (B, dims[3], H/8, W/8)
        return self.head(x)  # (B, num_classes)

    def _check_input(self, x: Tensor) -> None:
        check_type("ConvNeXt input", x, Tensor, what="a Tensor")
        expected = f"(B, {self.config.in_chans}, H, W) with H, W >= {self.config.min_input_size}"
        if x.ndim != 4 or x.shape[1] != self.config.in_chans or min(x.shape[-2:]) < self.config.min_input_size:
            raise value_error("ConvNeXt input shape", tuple(x.shape), expected)


def _init_weights(module: nn.Module) -> None:
    """Truncated normal (std 0.02, cut at +-2 std) for conv and linear weights, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------
# Factories (the variants are in candidates.convnext.config)
# ---------------------------------------------------------------------------------------------

_FACTORY_OPTIONS = ("drop_path_rate", "layer_scale_init_value", "in_chans", "num_classes", "use_cifar_stem")


def create_convnext(variant: str, **options: Any) -> ConvNeXt:
    """The ConvNeXt ``variant`` (a key of :data:`VARIANTS`); ``options`` override config fields
    other than depths/dims (``create_convnext("tiny", num_classes=10)``)."""
    check_choice("ConvNeXt variant", variant, VARIANTS)
    unknown = sorted(set(options) - set(_FACTORY_OPTIONS))
    if unknown:  # an unknown keyword is a TypeError, as for any Python call
        raise TypeError(
            f"convnext_{variant}() options must be among {', '.join(_FACTORY_OPTIONS)}, "
            f"got {', '.join(map(repr, unknown))}; "
            f"for other depths/dims build ConvNeXt(ConvNeXtConfig(...))"
        )
    return ConvNeXt(dataclasses.replace(VARIANTS[variant], **options))


def convnext_tiny(**options: Any) -> ConvNeXt:
    """ConvNeXt-T, 28.6M parameters; ``options`` override ConvNeXtConfig fields (not depths/dims)."""
    return create_convnext("tiny", **options)


def convnext_small(**options: Any) -> ConvNeXt:
    """ConvNeXt-S, 50.2M parameters; ``options`` override ConvNeXtConfig fields (not depths/dims)."""
    return create_convnext("small", **options)


def convnext_base(**options: Any) -> ConvNeXt:
    """ConvNeXt-B, 88.6M parameters; ``options`` override ConvNeXtConfig fields (not depths/dims)."""
    return create_convnext("base", **options)


def convnext_large(**options: Any) -> ConvNeXt:
    """ConvNeXt-L, 197.8M parameters; ``options`` override ConvNeXtConfig fields (not depths/dims)."""
    return create_convnext("large", **options)


def convnext_xlarge(**options: Any) -> ConvNeXt:
    """ConvNeXt-XL, 350.2M parameters; ``options`` override ConvNeXtConfig fields (not depths/dims)."""
    return create_convnext("xlarge", **options)
