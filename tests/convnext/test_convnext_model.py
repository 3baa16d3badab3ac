"""Unit tests of candidates.convnext: shapes, timm-compatible keys, schedule, init, validation.

Full-size variants are only built on the meta device (shapes without storage, ~0.2 s each), so
parameter counts and key sets of all five variants are checked without allocating 350M floats.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import timm
import torch
from torch import nn

import candidates.convnext as convnext
from candidates.convnext import ConvNeXt, ConvNeXtConfig, DropPath, LayerNorm2d
from reference.convnext import timm_convnext, timm_convnext_cifar

VARIANTS = ("tiny", "small", "base", "large", "xlarge")
# Liu et al. 2022, Table 1/2: parameters of the ImageNet-1K models (1000 classes).
PAPER_PARAMS_M = {"tiny": 28.6, "small": 50.2, "base": 88.6, "large": 197.8, "xlarge": 350.2}
# A few-channel config: the same code paths as the real variants at a fraction of the cost.
TOY = ConvNeXtConfig(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), num_classes=5, drop_path_rate=0.3)


def factory(variant: str):
    return getattr(convnext, f"convnext_{variant}")


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --- shapes and stems ---------------------------------------------------------------------------


@pytest.mark.parametrize(("use_cifar_stem", "size", "stem_size"), [(False, 64, 16), (True, 32, 32)])
def test_forward_shapes_for_both_stems(use_cifar_stem: bool, size: int, stem_size: int) -> None:
    model = ConvNeXt(ConvNeXtConfig(**{**TOY.__dict__, "use_cifar_stem": use_cifar_stem})).eval()
    x = torch.randn(2, 3, size, size)
    assert model.stem(x).shape == (2, 8, stem_size, stem_size)
    assert model(x).shape == (2, 5)
    stage_sizes = []
    h = model.stem(x)
    for stage in model.stages:
        h = stage(h)
        stage_sizes.append(tuple(h.shape[1:]))
    s = stem_size
    assert stage_sizes == [(8, s, s), (16, s // 2, s // 2), (24, s // 4, s // 4), (32, s // 8, s // 8)]


def test_stem_and_downsample_layers() -> None:
    with torch.device("meta"):  # layer hyper-parameters only, no weights needed
        imagenet, cifar = convnext.convnext_tiny(), convnext.convnext_tiny(use_cifar_stem=True, num_classes=10)
    conv = imagenet.stem[0]
    assert (conv.kernel_size, conv.stride, conv.padding) == ((4, 4), (4, 4), (0, 0))
    conv = cifar.stem[0]
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (1, 1), (1, 1))
    assert isinstance(imagenet.stem[1], LayerNorm2d) and isinstance(cifar.stem[1], LayerNorm2d)
    assert isinstance(imagenet.stages[0].downsample, nn.Identity)  # stage 0: no downsample
    for i, stage in enumerate(imagenet.stages[1:], start=1):
        norm, conv = stage.downsample
        assert isinstance(norm, LayerNorm2d) and norm.normalized_shape == (imagenet.config.dims[i - 1],)
        assert (conv.kernel_size, conv.stride, conv.out_channels) == ((2, 2), (2, 2), imagenet.config.dims[i])
    block = imagenet.stages[2].blocks[0]
    assert (block.conv_dw.kernel_size, block.conv_dw.padding, block.conv_dw.groups) == ((7, 7), (3, 3), 384)
    assert block.mlp.fc1.out_features == 4 * 384 and block.mlp.act.approximate == "none"
    assert block.norm.eps == 1e-6 and imagenet.head.norm.eps == 1e-6


def test_layernorm2d_normalizes_channels_of_nchw() -> None:
    norm = LayerNorm2d(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    norm = norm.double()
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(norm(x), expected, rtol=0, atol=1e-12)


# --- keys and weight transfer -------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_keys_and_shapes_equal_timm(variant: str) -> None:
    with torch.device("meta"):
        candidate = factory(variant)()
        reference = timm.create_model(f"convnext_{variant}", pretrained=False)
    assert shapes(candidate) == shapes(reference)


def test_cifar_state_dict_keys_equal_timm_with_cifar_stem() -> None:
    with torch.device("meta"):
        candidate = convnext.convnext_tiny(num_classes=10, use_cifar_stem=True)
        reference = timm_convnext_cifar(num_classes=10)
    assert shapes(candidate) == shapes(reference)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_candidate_module_has_a_timm_twin_of_the_same_name(variant: str) -> None:
    # Alignment matches layers by identical names: none of ours may be left without a twin.
    with torch.device("meta"):
        candidate = factory(variant)()
        reference = timm.create_model(f"convnext_{variant}", pretrained=False)
    ours = {name for name, _ in candidate.named_modules()}
    theirs = {name for name, _ in reference.named_modules()}
    assert ours - theirs == set()


def _random_timm_tiny() -> nn.Module:
    torch.manual_seed(0)
    reference = timm_convnext("tiny", num_classes=10)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))  # make layer scales and biases live
    return reference.double().eval()


def test_strict_load_timm_into_candidate_and_back_gives_equal_outputs() -> None:
    reference = _random_timm_tiny()
    candidate = convnext.convnext_tiny(num_classes=10).double().eval()
    candidate.load_state_dict(convnext.convert_timm_state_dict(reference.state_dict()), strict=True)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(candidate(x), reference(x), rtol=0, atol=1e-12)

    # candidate -> timm: a wiped timm model takes our state dict strictly and agrees again.
    back = copy.deepcopy(reference)
    with torch.no_grad():
        for p in back.parameters():
            p.zero_()
    back.load_state_dict(convnext.convert_timm_state_dict(candidate.state_dict()), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(back(x), reference(x), rtol=0, atol=1e-12)


# --- parameter counts ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_within_10_percent_of_paper(variant: str) -> None:
    with torch.device("meta"):
        model = factory(variant)()
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / 1e6 - PAPER_PARAMS_M[variant]) <= 0.10 * PAPER_PARAMS_M[variant], count


# --- stochastic depth ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_drop_path_rates_rise_linearly_over_all_blocks(variant: str) -> None:
    with torch.device("meta"):
        model = factory(variant)()
    rates = [block.drop_path.drop_prob for stage in model.stages for block in stage.blocks]
    config = convnext.VARIANTS[variant]
    assert len(rates) == sum(config.depths)
    expected = [config.drop_path_rate * i / (len(rates) - 1) for i in range(len(rates))]
    assert rates == pytest.approx(expected, abs=1e-12)
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(config.drop_path_rate)
    # Across stage boundaries too: the schedule is global, not restarted per stage.
    first_of_stage1 = model.stages[1].blocks[0].drop_path.drop_prob
    assert first_of_stage1 == pytest.approx(expected[config.depths[0]])


def test_drop_path_rates_match_timm_schedule() -> None:
    with torch.device("meta"):
        reference = timm_convnext("small")
        candidate = convnext.convnext_small()
    theirs = [getattr(b.drop_path, "drop_prob", 0.0) for s in reference.stages for b in s.blocks]
    ours = [b.drop_path.drop_prob for s in candidate.stages for b in s.blocks]
    assert ours == pytest.approx(theirs, abs=1e-6)  # timm's linspace runs in float32


def test_drop_path_drops_whole_samples_in_training_only() -> None:
    drop = DropPath(0.5)
    x = torch.ones(4000, 3, 2, 2)
    torch.manual_seed(0)
    y = drop.train()(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1/keep
    assert bool((per_sample == per_sample[:, :1]).all())  # one decision per sample
    kept = float((per_sample[:, 0] > 0).float().mean())
    assert abs(kept - 0.5) < 0.05
    assert drop.eval()(x) is x
    assert DropPath(0.0).train()(x) is x


def test_drop_path_rejects_a_probability_of_one() -> None:
    with pytest.raises(ValueError, match=r"^DropPath.drop_prob must be a number in \[0, 1\), got 1.0$"):
        DropPath(1.0)


def test_drop_path_rejects_a_string_probability_as_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"^DropPath.drop_prob must be a number in \[0, 1\), got str '0.1'$"):
        DropPath("0.1")  # type: ignore[arg-type]


# --- init ---------------------------------------------------------------------------------------


def test_init_truncated_normal_weights_zero_biases_unit_norms() -> None:
    torch.manual_seed(0)
    model = ConvNeXt(ConvNeXtConfig(depths=(1, 1, 1, 1), dims=(32, 64, 96, 128), layer_scale_init_value=0.25))
    weights = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert float(module.weight.detach().abs().max()) <= 0.04, name  # truncated at 2 std
            assert torch.count_nonzero(module.bias) == 0, name
            weights.append(module.weight.detach().flatten())
        elif isinstance(module, nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert torch.count_nonzero(module.bias) == 0, name
    std = float(torch.cat(weights).std())
    # A normal of std 0.02 truncated at +-2 std has std 0.02 * 0.8796.
    assert std == pytest.approx(0.02 * 0.8796, rel=0.02)
    gammas = [block.gamma for stage in model.stages for block in stage.blocks]
    assert all(torch.equal(g, torch.full_like(g, 0.25)) for g in gammas)


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "message"), [
    ("depths", (3, 3, 9),
     r"ConvNeXtConfig.depths must be a tuple of 4 positive ints \(one per stage\), got \(3, 3, 9\)$"),
    ("depths", (3, 0, 9, 3), r"ConvNeXtConfig.depths\[1\] must be an int >= 1, got 0$"),
    ("drop_path_rate", 1.0, r"ConvNeXtConfig.drop_path_rate must be a number in \[0, 1\), got 1.0$"),
    ("drop_path_rate", -0.1, r"ConvNeXtConfig.drop_path_rate must be a number in \[0, 1\), got -0.1$"),
    ("drop_path_rate", float("nan"), r"ConvNeXtConfig.drop_path_rate must be a number in \[0, 1\), got nan$"),
    ("layer_scale_init_value", 0.0, r"ConvNeXtConfig.layer_scale_init_value must be a finite number > 0, got 0.0$"),
    ("num_classes", 0, r"ConvNeXtConfig.num_classes must be an int >= 1, got 0$"),
])
def test_config_rejects_out_of_range_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConvNeXtConfig(**{field: value})


@pytest.mark.parametrize(("field", "value", "message"), [
    ("dims", "96", r"ConvNeXtConfig.dims must be a tuple of 4 positive ints \(one per stage\), got str '96'$"),
    ("dims", (96, 192, 384, 768.0), r"ConvNeXtConfig.dims\[3\] must be an int >= 1, got float 768.0$"),
    ("drop_path_rate", False, r"ConvNeXtConfig.drop_path_rate must be a number in \[0, 1\), got bool False$"),
    ("layer_scale_init_value", "1e-6", r"ConvNeXtConfig.layer_scale_init_value must be a finite number > 0, "
                                       r"got str '1e-6'$"),
    ("in_chans", True, r"ConvNeXtConfig.in_chans must be an int >= 1, got bool True$"),
    ("num_classes", 10.0, r"ConvNeXtConfig.num_classes must be an int >= 1, got float 10.0$"),
    ("use_cifar_stem", "yes", r"ConvNeXtConfig.use_cifar_stem must be a bool, got str 'yes'$"),
])
def test_config_rejects_wrong_types_as_type_errors(field: str, value: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        ConvNeXtConfig(**{field: value})


def test_config_stores_an_int_layer_scale_as_a_float_so_gamma_is_a_floating_parameter() -> None:
    config = ConvNeXtConfig(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), layer_scale_init_value=1)
    assert type(config.layer_scale_init_value) is float
    assert ConvNeXt(config).stages[0].blocks[0].gamma.dtype == torch.float32


def test_config_is_frozen_and_normalizes_lists_to_tuples() -> None:
    config = ConvNeXtConfig(depths=[1, 1, 1, 1], dims=[8, 8, 8, 8])
    assert config.depths == (1, 1, 1, 1) and config.dims == (8, 8, 8, 8)
    with pytest.raises(AttributeError):
        config.depths = (2, 2, 2, 2)  # type: ignore[misc]


def test_factory_rejects_a_shape_option_naming_the_ones_it_takes() -> None:
    with pytest.raises(TypeError, match=r"^convnext_tiny\(\) options must be among drop_path_rate, .*use_cifar_stem, "
                                        r"got 'depths'; for other depths/dims build "
                                        r"ConvNeXt\(ConvNeXtConfig\(...\)\)$"):
        convnext.convnext_tiny(depths=(1, 1, 1, 1))


def test_factory_rejects_a_misspelled_option() -> None:
    with pytest.raises(TypeError, match=r"^convnext_base\(\) options must be among .* got 'num_class';"):
        convnext.convnext_base(num_class=10)


def test_an_unknown_variant_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"^ConvNeXt variant must be one of 'tiny', 'small', 'base', 'large', "
                                         r"'xlarge', got 'tiny2'; did you mean 'tiny'\?$"):
        convnext.create_convnext("tiny2")


def test_a_named_variant_builds_the_same_model_as_its_factory() -> None:
    with torch.device("meta"):
        by_name, by_factory = convnext.create_convnext("small", num_classes=10), convnext.convnext_small(num_classes=10)
    assert by_name.config == by_factory.config == dataclasses.replace(convnext.VARIANTS["small"], num_classes=10)


def test_model_rejects_a_non_config_as_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"^ConvNeXt\(config\) must be a ConvNeXtConfig, got dict \{'depths': "
                                        r"\(1, 1, 1, 1\)\}; build one with ConvNeXtConfig"):
        ConvNeXt({"depths": (1, 1, 1, 1)})  # type: ignore[arg-type]


def test_model_rejects_a_non_tensor_input_as_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"^ConvNeXt input must be a Tensor, got list \[1.0\]$"):
        ConvNeXt(TOY).eval()([1.0])  # type: ignore[arg-type]


@pytest.mark.parametrize(("shape", "message"), [
    ((2, 1, 32, 32), r"^ConvNeXt input shape must be \(B, 3, H, W\) with H, W >= 32, got \(2, 1, 32, 32\)$"),
    ((2, 3, 16, 32), r"got \(2, 3, 16, 32\)$"),
    ((3, 32, 32), r"got \(3, 32, 32\)$"),
])
def test_model_rejects_inputs_of_the_wrong_shape(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConvNeXt(TOY).eval()(torch.randn(*shape))


def test_the_cifar_stem_accepts_8_pixel_inputs() -> None:
    cifar = ConvNeXt(ConvNeXtConfig(**{**TOY.__dict__, "use_cifar_stem": True})).eval()
    assert cifar(torch.randn(1, 3, 8, 8)).shape == (1, 5)  # 8 px survives the stride-1 stem


def test_variant_table_matches_paper_shapes() -> None:
    assert {k: (v.depths, v.dims) for k, v in convnext.VARIANTS.items()} == {
        "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
        "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
        "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
        "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
        "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
    }
    assert {k: v.drop_path_rate for k, v in convnext.VARIANTS.items()} == {
        "tiny": 0.1, "small": 0.4, "base": 0.5, "large": 0.5, "xlarge": 0.5}
    with pytest.raises(TypeError):
        convnext.VARIANTS["huge"] = convnext.VARIANTS["tiny"]  # type: ignore[index]
