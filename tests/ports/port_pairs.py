"""Pairs of independently written public implementations of the same architecture.

Each pair is a candidate (the "port") and a reference from another library -- torchvision,
timm or transformers -- in a tiny configuration (a few blocks, widths 16-64, 32x32 or 64x64
inputs) so that a float64 comparison takes about a second. The two sides share no code, no
module names and often no tensor layouts: fused ``qkv`` against split ``q/k/v``, layer scales
``(C, 1, 1)`` against ``(C,)``, 1x1 convolutions against linear layers, channels-first norms
against permute + channels-last norms, ``(B, H, W, C)`` against ``(B, L, C)`` token maps.

``build()`` makes every setting the libraries expose semantically equal (norm eps, activation,
pooling, head), so after a weight transfer the pair agrees to float64 round-off. Where a
library's default really differs from the other's (a LayerNorm eps of 1e-12 against 1e-6),
``build(keep_defaults=True)`` keeps that default and ``default_difference`` names the first
candidate module that differs because of it.

Both models are re-drawn from a seeded generator with :func:`harness.randomize_` (vectors near
their init, matrices N(0, 1/fan_in); BatchNorm running statistics too), candidate and reference
from different seeds, so nothing agrees before a transfer. Nothing is downloaded.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

import harness

DTYPE = torch.float64
REFERENCE_SEED = 0
CANDIDATE_SEED = 1
INPUT_SEED = 2

Built = tuple[nn.Module, nn.Module, torch.Tensor]


@dataclass(frozen=True)
class PortPair:
    """One candidate/reference pair of independent implementations.

    Attributes:
        name: ``<family>_<candidate library>_<reference library>``.
        build: ``build(keep_defaults=False) -> (candidate, reference, inputs)``, float64, eval mode.
        default_difference: what ``keep_defaults=True`` leaves different, or ``None`` when the
            two libraries' defaults agree.
        default_culprit: the first candidate module that differs under ``keep_defaults=True``.
        no_counterpart: parameter/buffer keys (candidate or reference side) that have no
            counterpart on the other side, with the reason -- they may stay unmatched.
        bugs: candidate module names to break, one per injected bug:
            ``weight`` (a Conv/Linear whose weight is perturbed), ``eps`` (a norm), ``act``
            (an activation module).
        compare_kwargs: extra :func:`harness.compare` arguments (output selection) for pairs
            whose outputs differ in structure.
    """

    name: str
    build: Callable[..., Built]
    bugs: Mapping[str, str]
    default_difference: str | None = None
    default_culprit: str | None = None
    no_counterpart: Mapping[str, str] = field(default_factory=dict)
    compare_kwargs: Mapping[str, Any] = field(default_factory=dict)


# -- shared helpers --------------------------------------------------------------------------------

def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Re-draw parameters and BatchNorm running statistics; float64; eval mode."""
    model = model.to(DTYPE).eval()
    g = torch.Generator().manual_seed(seed)
    harness.randomize_(model, g)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g, dtype=DTYPE) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g, dtype=DTYPE) + 0.5)
    return model


def image(size: int, channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(INPUT_SEED)
    return torch.randn(1, channels, size, size, generator=g, dtype=DTYPE)


def finish(candidate: nn.Module, reference: nn.Module, size: int) -> Built:
    return randomize(candidate, CANDIDATE_SEED), randomize(reference, REFERENCE_SEED), image(size)


def seeded(builder: Callable[..., Built]) -> Callable[..., Built]:
    """Build once under a fixed global RNG (library inits draw from it, restored after); hand out
    deep copies, so every caller gets the same fresh models and may change them."""

    @functools.cache
    def prototype(keep_defaults: bool) -> Built:
        with torch.random.fork_rng():
            torch.manual_seed(REFERENCE_SEED)
            return builder(keep_defaults)

    @functools.wraps(builder)
    def build(keep_defaults: bool = False) -> Built:
        return copy.deepcopy(prototype(keep_defaults))

    return build


def logits(output: Any) -> dict[str, torch.Tensor]:
    """The class logits of a transformers output or of a plain tensor."""
    return {"logits": output if isinstance(output, torch.Tensor) else output.logits}


# -- ResNet (plain CNN, BatchNorm running statistics) ----------------------------------------------

RESNET_WIDTHS = (16, 32, 64, 128)


def _tv_resnet() -> nn.Module:
    from torchvision.models.resnet import BasicBlock, ResNet

    # torchvision fixes the widths at 64..512; these are the smallest it builds
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)


@seeded
def resnet_hf_timm(keep_defaults: bool = False) -> Built:
    from timm.models.resnet import BasicBlock, ResNet
    from transformers import ResNetConfig, ResNetForImageClassification

    # timm's 7x7 stem is 64 wide whatever the stage widths
    config = ResNetConfig(embedding_size=64, hidden_sizes=list(RESNET_WIDTHS), depths=[1, 1, 1, 1],
                          layer_type="basic", hidden_act="relu", downsample_in_first_stage=False,
                          num_labels=10)
    reference = ResNet(BasicBlock, [1, 1, 1, 1], channels=RESNET_WIDTHS, num_classes=10)
    return finish(ResNetForImageClassification(config), reference, 64)


@seeded
def resnet_tv_hf(keep_defaults: bool = False) -> Built:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[1, 1, 1, 1],
                          layer_type="basic", hidden_act="relu", downsample_in_first_stage=False,
                          num_labels=10)
    return finish(_tv_resnet(), ResNetForImageClassification(config), 64)


# -- ConvNeXt (layer scale (C,1,1) vs (C,), channels-first vs channels-last norms, conv1x1 vs linear)

# no width equals a feature-map side (16, 8, 4, 2), so NCHW and NHWC never look alike by shape
CONVNEXT_DIMS = (20, 24, 40, 48)


def _timm_convnext(conv_mlp: bool) -> nn.Module:
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(depths=(1, 1, 1, 1), dims=CONVNEXT_DIMS, num_classes=10, conv_mlp=conv_mlp,
                    ls_init_value=1e-6, norm_eps=1e-6)


@seeded
def convnext_tv_timm(keep_defaults: bool = False) -> Built:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    dims = CONVNEXT_DIMS
    settings = [CNBlockConfig(d, dims[i + 1] if i + 1 < len(dims) else None, 1) for i, d in enumerate(dims)]
    candidate = ConvNeXt(settings, stochastic_depth_prob=0.0, layer_scale=1e-6, num_classes=10)
    # conv_mlp: timm's blocks use channels-first LayerNorm2d and 1x1 convolutions, torchvision's
    # permute to channels-last LayerNorm and Linear
    return finish(candidate, _timm_convnext(conv_mlp=True), 64)


@seeded
def convnext_hf_timm(keep_defaults: bool = False) -> Built:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    # transformers' final (pooled) LayerNorm takes config.layer_norm_eps, default 1e-12;
    # timm's head norm uses 1e-6 like every other ConvNeXt norm
    eps = {} if keep_defaults else {"layer_norm_eps": 1e-6}
    config = ConvNextConfig(hidden_sizes=list(CONVNEXT_DIMS), depths=[1, 1, 1, 1], hidden_act="gelu",
                            layer_scale_init_value=1e-6, drop_path_rate=0.0, num_labels=10, **eps)
    return finish(ConvNextForImageClassification(config), _timm_convnext(conv_mlp=False), 64)


@seeded
def convnextv2_hf_timm(keep_defaults: bool = False) -> Built:
    from timm.models.convnext import ConvNeXt
    from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

    # the GRN's weight and bias have one shape and meet in one expression, used in opposite order:
    # transformers `weight * (x * n) + bias + x`, timm `x + addcmul(bias, weight, x * n)`
    eps = {} if keep_defaults else {"layer_norm_eps": 1e-6}
    config = ConvNextV2Config(hidden_sizes=list(CONVNEXT_DIMS), depths=[1, 1, 1, 1], hidden_act="gelu",
                              drop_path_rate=0.0, num_labels=10, **eps)
    reference = ConvNeXt(depths=(1, 1, 1, 1), dims=CONVNEXT_DIMS, num_classes=10, use_grn=True,
                         ls_init_value=None, norm_eps=1e-6)
    return finish(ConvNextV2ForImageClassification(config), reference, 64)


# -- RegNetY (squeeze-excitation; the shortcut runs before the main branch in torchvision) ----------

@seeded
def regnet_tv_hf(keep_defaults: bool = False) -> Built:
    from torchvision.models.regnet import BlockParams, RegNet
    from transformers import RegNetConfig, RegNetForImageClassification

    # two stages: widths 16 and 32, depths 1 and 3, group width 8, SE ratio 1/4
    params = BlockParams.from_init_params(depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25)
    candidate = RegNet(params, num_classes=10, stem_width=16)
    config = RegNetConfig(embedding_size=16, hidden_sizes=list(params.widths), depths=list(params.depths),
                          groups_width=params.group_widths[0], layer_type="y", hidden_act="relu", num_labels=10)
    return finish(candidate, RegNetForImageClassification(config), 64)


@seeded
def regnet_hf_tv(keep_defaults: bool = False) -> Built:
    """The same pair the other way round: the port runs its main branch before its shortcut, whose
    1x1 kernel has the shape of the branch's first (bottleneck multiplier 1), three modules below
    the block (``layer.0.convolution``)."""
    reference, candidate, x = regnet_tv_hf(keep_defaults)
    return randomize(candidate, CANDIDATE_SEED), randomize(reference, REFERENCE_SEED), x


# -- ViT (fused qkv on one side only) ---------------------------------------------------------------

VIT = dict(image=32, patch=8, dim=32, depth=2, heads=2, mlp=64)


def _hf_vit_config(config_cls: type, keep_defaults: bool) -> Any:
    # transformers' ViT/DeiT LayerNorm eps defaults to 1e-12; timm and torchvision use 1e-6
    eps = {} if keep_defaults else {"layer_norm_eps": 1e-6}
    config = config_cls(image_size=VIT["image"], patch_size=VIT["patch"], hidden_size=VIT["dim"],
                        num_hidden_layers=VIT["depth"], num_attention_heads=VIT["heads"],
                        intermediate_size=VIT["mlp"], hidden_act="gelu", qkv_bias=True, num_labels=10,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **eps)
    # eager attention runs its softmax in float32 (transformers); sdpa stays in float64
    config._attn_implementation = "sdpa"
    return config


def _timm_vit(distilled: bool = False) -> nn.Module:
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    cls = VisionTransformerDistilled if distilled else VisionTransformer
    return cls(img_size=VIT["image"], patch_size=VIT["patch"], embed_dim=VIT["dim"], depth=VIT["depth"],
               num_heads=VIT["heads"], mlp_ratio=VIT["mlp"] / VIT["dim"], qkv_bias=True,
               global_pool="token", num_classes=10)


@seeded
def vit_hf_timm(keep_defaults: bool = False) -> Built:
    from transformers import ViTConfig, ViTForImageClassification

    candidate = ViTForImageClassification(_hf_vit_config(ViTConfig, keep_defaults))
    return finish(candidate, _timm_vit(), VIT["image"])


def _tv_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    # q, k and v live in one nn.MultiheadAttention ``in_proj_weight`` (3D, D)
    return VisionTransformer(image_size=VIT["image"], patch_size=VIT["patch"], num_layers=VIT["depth"],
                             num_heads=VIT["heads"], hidden_dim=VIT["dim"], mlp_dim=VIT["mlp"], num_classes=10)


@seeded
def vit_tv_hf(keep_defaults: bool = False) -> Built:
    from transformers import ViTConfig, ViTForImageClassification

    reference = ViTForImageClassification(_hf_vit_config(ViTConfig, keep_defaults))
    return finish(_tv_vit(), reference, VIT["image"])


@seeded
def vit_tv_timm(keep_defaults: bool = False) -> Built:
    return finish(_tv_vit(), _timm_vit(), VIT["image"])


@seeded
def deit_hf_timm(keep_defaults: bool = False) -> Built:
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    candidate = DeiTForImageClassificationWithTeacher(_hf_vit_config(DeiTConfig, keep_defaults))
    return finish(candidate, _timm_vit(distilled=True), VIT["image"])


@seeded
def beit_hf_timm(keep_defaults: bool = False) -> Built:
    from timm.models.beit import Beit
    from transformers import BeitConfig, BeitForImageClassification

    # timm fuses q/k/v into one weight but keeps the biases apart: `cat(q_bias, zeros, v_bias)`
    # is built in functional code; transformers' key projection has no bias at all
    eps = {} if keep_defaults else {"layer_norm_eps": 1e-6}
    config = BeitConfig(image_size=VIT["image"], patch_size=VIT["patch"], hidden_size=VIT["dim"],
                        num_hidden_layers=VIT["depth"], num_attention_heads=VIT["heads"],
                        intermediate_size=VIT["mlp"], hidden_act="gelu", use_relative_position_bias=True,
                        use_absolute_position_embeddings=False, layer_scale_init_value=0.1,
                        use_mean_pooling=True, drop_path_rate=0.0, num_labels=10, **eps)
    config._attn_implementation = "sdpa"
    reference = Beit(img_size=VIT["image"], patch_size=VIT["patch"], embed_dim=VIT["dim"], depth=VIT["depth"],
                     num_heads=VIT["heads"], mlp_ratio=VIT["mlp"] / VIT["dim"], use_rel_pos_bias=True,
                     use_abs_pos_emb=False, init_values=0.1, global_pool="avg", num_classes=10)
    return finish(BeitForImageClassification(config), reference, VIT["image"])


# -- Swin (hierarchical, windowed; (B,H,W,C) maps vs (B,L,C) tokens; relative position bias) --------

# stage 1: 16x16 tokens in 4 shifted 8x8 windows; stage 2: 8x8 tokens, one window (no shift)
SWIN = dict(image=32, patch=2, dim=24, depths=(2, 2), heads=(2, 4), window=8)


def _timm_swin() -> nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(img_size=SWIN["image"], patch_size=SWIN["patch"], embed_dim=SWIN["dim"],
                           depths=SWIN["depths"], num_heads=SWIN["heads"], window_size=SWIN["window"],
                           mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.0, num_classes=10)


@seeded
def swin_tv_timm(keep_defaults: bool = False) -> Built:
    from torchvision.models.swin_transformer import SwinTransformer

    candidate = SwinTransformer(patch_size=[SWIN["patch"]] * 2, embed_dim=SWIN["dim"], depths=list(SWIN["depths"]),
                                num_heads=list(SWIN["heads"]), window_size=[SWIN["window"]] * 2, mlp_ratio=4.0,
                                stochastic_depth_prob=0.0, num_classes=10)
    return finish(candidate, _timm_swin(), SWIN["image"])


@seeded
def swin_hf_timm(keep_defaults: bool = False) -> Built:
    from transformers import SwinConfig, SwinForImageClassification

    config = SwinConfig(image_size=SWIN["image"], patch_size=SWIN["patch"], embed_dim=SWIN["dim"],
                        depths=list(SWIN["depths"]), num_heads=list(SWIN["heads"]), window_size=SWIN["window"],
                        mlp_ratio=4.0, qkv_bias=True, hidden_act="gelu", layer_norm_eps=1e-5,
                        drop_path_rate=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        num_labels=10)
    # eager attention runs its softmax in float32 (transformers); sdpa stays in float64
    config._attn_implementation = "sdpa"
    return finish(SwinForImageClassification(config), _timm_swin(), SWIN["image"])


# -- injected single-module bugs -------------------------------------------------------------------

def perturb_weight(model: nn.Module, target: str) -> str:
    """Scale each element of one parameter by 1 +- 1e-3 (seeded signs); return the module name.

    ``target`` is ``module`` (its ``weight``, else its first own parameter) or ``module:param``.
    Signs differ per element so that a following norm cannot absorb the change as a scale.
    """
    name, _, param = target.partition(":")
    module = model.get_submodule(name)
    own = dict(module.named_parameters(recurse=False))
    if not own:
        raise ValueError(f"module {name!r} owns no parameter to perturb")
    tensor = own[param or ("weight" if "weight" in own else next(iter(own)))]
    g = torch.Generator().manual_seed(3)
    signs = torch.randint(0, 2, tensor.shape, generator=g).to(tensor.dtype).mul_(2).sub_(1)
    with torch.no_grad():
        tensor.mul_(1 + 1e-3 * signs)
    return name


def change_eps(model: nn.Module, name: str) -> str:
    """Multiply one norm's eps by 1000 (1e-6 -> 1e-3): a wrong-default bug."""
    module = model.get_submodule(name)
    if not isinstance(getattr(module, "eps", None), float):
        raise ValueError(f"module {name!r} ({type(module).__name__}) has no float eps")
    module.eps = module.eps * 1000
    return name


def swap_activation(model: nn.Module, name: str) -> str:
    """Replace one activation module by a close variant: exact GELU -> tanh GELU, ReLU -> LeakyReLU."""
    module = model.get_submodule(name)
    kind = type(module).__name__.lower()
    if "gelu" in kind:
        variant: nn.Module = nn.GELU(approximate="tanh")
    elif "relu" in kind:
        variant = nn.LeakyReLU(0.1, inplace=getattr(module, "inplace", False))
    else:
        raise ValueError(f"module {name!r} is a {type(module).__name__}, not a GELU or ReLU")
    model.set_submodule(name, variant.train(module.training))
    return name


BUGS: dict[str, Callable[[nn.Module, str], str]] = {
    "weight": perturb_weight,
    "eps": change_eps,
    "act": swap_activation,
}


# -- the registry ----------------------------------------------------------------------------------

HF_VIT_EPS = "transformers' ViT/DeiT LayerNorm eps defaults to 1e-12, timm's and torchvision's to 1e-6"

PAIRS: tuple[PortPair, ...] = (
    PortPair(
        "resnet_hf_timm", resnet_hf_timm,
        bugs={"weight": "resnet.encoder.stages.1.layers.0.shortcut.convolution",
              "eps": "resnet.encoder.stages.2.layers.0.layer.0.normalization",
              "act": "resnet.encoder.stages.1.layers.0.layer.0.activation"},
    ),
    PortPair(
        "resnet_tv_hf", resnet_tv_hf,
        bugs={"weight": "layer3.0.conv1", "eps": "layer2.0.downsample.1", "act": "relu"},
    ),
    PortPair(
        "convnext_tv_timm", convnext_tv_timm,
        # features.3.0 owns the (C,1,1) layer scale that timm keeps as (C,) gamma
        bugs={"weight": "features.3.0", "eps": "features.2.0", "act": "features.5.0.block.4"},
    ),
    PortPair(
        "convnext_hf_timm", convnext_hf_timm,
        bugs={"weight": "convnext.encoder.stages.1.layers.0.pwconv1",
              "eps": "convnext.encoder.stages.2.layers.0.layernorm",
              "act": "convnext.encoder.stages.0.layers.0.act"},
        default_difference="transformers' pooled ConvNeXt LayerNorm eps defaults to 1e-12 (timm: 1e-6)",
        default_culprit="convnext.layernorm",
    ),
    PortPair(
        "convnextv2_hf_timm", convnextv2_hf_timm,
        bugs={"weight": "convnextv2.encoder.stages.1.layers.0.grn",
              "eps": "convnextv2.encoder.stages.0.layers.0.layernorm",
              "act": "convnextv2.encoder.stages.2.layers.0.act"},
        default_difference="transformers' pooled ConvNeXt V2 LayerNorm eps defaults to 1e-12 (timm: 1e-6)",
        default_culprit="convnextv2.layernorm",
    ),
    PortPair(
        "regnet_tv_hf", regnet_tv_hf,
        bugs={"weight": "trunk_output.block2.block2-0.f.b.0", "eps": "trunk_output.block1.block1-0.proj.1",
              "act": "trunk_output.block2.block2-1.f.se.activation"},
    ),
    PortPair(
        "regnet_hf_tv", regnet_hf_tv,
        bugs={"weight": "regnet.encoder.stages.1.layers.0.layer.1.convolution",
              "eps": "regnet.encoder.stages.0.layers.0.shortcut.normalization",
              "act": "regnet.encoder.stages.1.layers.1.layer.2.attention.1"},
    ),
    PortPair(
        "vit_hf_timm", vit_hf_timm,
        bugs={"weight": "vit.layers.0.attention.v_proj", "eps": "vit.layers.1.layernorm_after",
              "act": "vit.layers.1.mlp.activation_fn"},
        default_difference=HF_VIT_EPS, default_culprit="vit.layers.0.layernorm_before",
    ),
    PortPair(
        "vit_tv_hf", vit_tv_hf,
        # self_attention is an nn.MultiheadAttention: the perturbed weight is its fused in_proj_weight
        bugs={"weight": "encoder.layers.encoder_layer_1.self_attention",
              "eps": "encoder.layers.encoder_layer_0.ln_2", "act": "encoder.layers.encoder_layer_0.mlp.1"},
        default_difference=HF_VIT_EPS, default_culprit="encoder.layers.encoder_layer_0.ln_1",
    ),
    PortPair(
        "vit_tv_timm", vit_tv_timm,
        bugs={"weight": "encoder.layers.encoder_layer_0.mlp.3", "eps": "encoder.ln",
              "act": "encoder.layers.encoder_layer_1.mlp.1"},
    ),
    PortPair(
        "deit_hf_timm", deit_hf_timm,
        # the distillation token is a parameter of the embeddings module, used in its own forward
        bugs={"weight": "deit.embeddings:distillation_token", "eps": "deit.layernorm",
              "act": "deit.layers.0.mlp.activation_fn"},
        default_difference=HF_VIT_EPS, default_culprit="deit.layers.0.layernorm_before",
        compare_kwargs={"candidate_outputs": logits, "reference_outputs": logits},
    ),
    PortPair(
        "beit_hf_timm", beit_hf_timm,
        # lambda_1 is the layer scale of the attention branch, a parameter of the layer itself
        bugs={"weight": "beit.layers.0:lambda_1", "eps": "beit.pooler.layernorm",
              "act": "beit.layers.1.mlp.activation_fn"},
        default_difference="transformers' BEiT LayerNorm eps defaults to 1e-12 (timm: 1e-6)",
        default_culprit="beit.layers.0.layernorm_before",
    ),
    PortPair(
        "swin_tv_timm", swin_tv_timm,
        bugs={"weight": "features.2.reduction", "eps": "features.1.1.norm1", "act": "features.3.0.mlp.1"},
        no_counterpart={
            f"features.{s}.{b}.attn.relative_position_index":
                "torchvision saves its relative-position index table; timm computes it (non-persistent)"
            for s in (1, 3) for b in (0, 1)
        },
    ),
    PortPair(
        "swin_hf_timm", swin_hf_timm,
        # transformers keeps the relative position bias table in a module of its own
        bugs={"weight": "swin.encoder.layers.0.blocks.1.attention.relative_position_bias",
              "eps": "swin.encoder.layers.0.downsample.norm",
              "act": "swin.encoder.layers.1.blocks.1.mlp.activation_fn"},
    ),
)

BY_NAME = {pair.name: pair for pair in PAIRS}
