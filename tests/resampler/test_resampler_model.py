"""ResamplerConfig arithmetic and validation, the variants and factories, and the BiMamba block's two directions."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from candidates.resampler.mamba import MambaMixer
from candidates.resampler.resampler import (
    VARIANTS, BiMambaBlock, BiMambaResampler, ResamplerConfig, bimamba_large_resampler, bimamba_resampler, inner_width,
)

TINY = dict(vision_dim=6, hidden_dim=8, out_dim=5, depth=2, expand=1.5, d_state=3, d_conv=3)


# --- configuration ----------------------------------------------------------------------------


def test_bimamba_variant_is_the_trained_configuration():
    config = VARIANTS["bimamba"]
    assert (config.hidden_dim, config.expand, config.d_state, config.d_conv) == (1024, 1.75, 64, 4)
    assert config.d_inner == 1792  # 1024 * 1.75, exactly
    assert config.dt_rank == 64 and config.preset == "bimamba"
    assert (ResamplerConfig().hidden_dim, ResamplerConfig().expand) == (1536, 2.0)  # the model defaults


def test_non_integer_inner_width_is_rejected_with_the_arithmetic():
    with pytest.raises(ValueError, match=r"1536 \* 1\.3 = 1996\.8.*expand = k / 1536.*1997 / 1536"):
        ResamplerConfig(hidden_dim=1536, expand=1.3)


def test_ratio_read_back_from_weights_is_accepted():
    # 200 / 96 is not exact in binary; its product with 96 misses 200 by rounding only.
    assert inner_width(96, 200 / 96) == 200
    assert ResamplerConfig(hidden_dim=96, expand=200 / 96).d_inner == 200


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (dict(hidden_dim=0), ValueError, r"hidden_dim must be an int >= 1, got 0"),
        (dict(depth=-1), ValueError, r"depth must be an int >= 0, got -1"),
        (dict(d_state=True), TypeError, r"d_state must be an int >= 1, got bool True"),
        (dict(d_conv=2.0), TypeError, r"d_conv must be an int >= 1, got float 2.0"),
        (dict(expand=0), ValueError, r"expand must be a finite number > 0, got 0"),
        (dict(expand=float("nan")), ValueError, r"expand must be a finite number > 0, got nan"),
        (dict(norm_eps=-1e-5), ValueError, r"norm_eps must be a finite number > 0, got -1e-05"),
        (dict(bias=1), TypeError, r"bias must be a bool, got int 1"),
        (dict(dt_rank=0), ValueError, r"dt_rank must be an int >= 1, got 0; pass None for upstream's automatic rank"),
        (dict(preset=3), TypeError, r"preset must be a str or None, got int 3"),
    ],
)
def test_config_validation_names_field_expectation_and_value(overrides, error, message):
    with pytest.raises(error, match=message):
        ResamplerConfig(**overrides)


def test_variants_are_a_read_only_table_of_frozen_configs():
    with pytest.raises(TypeError):
        VARIANTS["mine"] = ResamplerConfig()  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        VARIANTS["bimamba"].hidden_dim = 7  # type: ignore[misc]
    assert all(config.preset == name for name, config in VARIANTS.items()), "a variant's preset label is its name"


def test_from_preset_overrides_and_keeps_auto_rank():
    config = ResamplerConfig.from_preset("bimamba", hidden_dim=512)
    assert (config.hidden_dim, config.expand, config.d_inner, config.dt_rank) == (512, 1.75, 896, 32)
    assert ResamplerConfig.from_preset("bimamba", dt_rank=8).dt_rank == 8
    with pytest.raises(ValueError, match=r"^resampler preset must be one of 'bimamba', 'bimamba_large', got 'mamba'; did you mean 'bimamba'\?$"):
        ResamplerConfig.from_preset("mamba")


def test_config_dict_round_trip_and_unknown_fields():
    config = ResamplerConfig(**TINY, preset="tiny")
    assert ResamplerConfig.from_dict(config.to_dict()) == config
    assert isinstance(ResamplerConfig(expand=2).expand, float)
    with pytest.raises(ValueError, match=r"unknown ResamplerConfig fields \['resampler_hidden_dim'\]"):
        ResamplerConfig.from_dict({"resampler_hidden_dim": 1024})


# --- model --------------------------------------------------------------------------------------


def test_resampler_shapes_and_names():
    model = BiMambaResampler(ResamplerConfig(**TINY))
    assert model(torch.randn(2, 7, 6)).shape == (2, 7, 5)
    names = set(model.state_dict())
    assert {"input_proj.weight", "blocks.1.forward_block.in_proj.weight", "blocks.1.backward_block.A_log",
            "norm.weight", "output_proj.bias"} <= names
    assert model.blocks[0].forward_block.in_proj.weight.shape == (2 * 12, 8)  # 2 x (8 * 1.5)


def test_each_factory_builds_its_variant_with_overrides():
    for factory, name in ((bimamba_resampler, "bimamba"), (bimamba_large_resampler, "bimamba_large")):
        with torch.device("meta"):  # shapes only: the full widths need no memory
            model = factory(depth=1, out_dim=32)
        assert model.config == ResamplerConfig.from_preset(name, depth=1, out_dim=32), name


def test_bimamba_factory_builds_the_trained_widths():
    with torch.device("meta"):
        model = bimamba_resampler(depth=1, d_state=4, vision_dim=1152, out_dim=32)
    assert model.input_proj.weight.shape == (1024, 1152)
    assert model.blocks[0].forward_block.in_proj.weight.shape == (3584, 1024)


def test_resampler_rejects_wrong_feature_width():
    model = BiMambaResampler(ResamplerConfig(**TINY))
    with pytest.raises(ValueError, match=r"expects \(batch, tokens, 6\) features, got \(2, 7, 4\)"):
        model(torch.randn(2, 7, 4))
    with pytest.raises(TypeError, match=r"^BiMambaResampler\(config\) must be a ResamplerConfig, got dict$"):
        BiMambaResampler(TINY)


def _block(seed: int) -> BiMambaBlock:
    torch.manual_seed(seed)
    block = BiMambaBlock(ResamplerConfig(**TINY)).double().eval()
    with torch.no_grad():  # live norm affine and skip terms
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return block


def _silence(mixer: MambaMixer) -> None:
    with torch.no_grad():
        mixer.out_proj.weight.zero_()


@pytest.mark.property
@settings(deadline=None)
@given(length=st.integers(1, 9), seed=st.integers(0, 2**31 - 1))
def test_backward_direction_is_forward_mixer_on_reversed_tokens(length, seed):
    """With the left-to-right branch silenced, block(x) - x == 0.5 * rev(M(rev(x))), rev by explicit indexing."""
    block = _block(seed)
    _silence(block.forward_block)
    mixer = MambaMixer(8, d_inner=12, d_state=3, d_conv=3).double().eval()
    mixer.load_state_dict(block.backward_block.state_dict())
    x = torch.randn(2, length, 8, dtype=torch.float64)
    reverse = torch.arange(length - 1, -1, -1)
    with torch.no_grad():
        expected = 0.5 * mixer(block.norm(x)[:, reverse])[:, reverse]
        torch.testing.assert_close(block(x) - x, expected, atol=1e-14, rtol=1e-12)


@pytest.mark.property
@settings(deadline=None)
@given(length=st.integers(2, 9), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_directions_see_past_and_future(length, data, seed):
    """Perturbing token k moves the forward branch at t >= k only and the backward branch at t <= k only."""
    k = data.draw(st.integers(0, length - 1))
    x = torch.randn(1, length, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[:, k, 0] += 1.0  # one channel: a shift of the whole token would vanish in the LayerNorm
    for silenced, moved in (("backward_block", slice(k, None)), ("forward_block", slice(0, k + 1))):
        block = _block(seed)
        _silence(getattr(block, silenced))
        with torch.no_grad():
            delta = ((block(x2) - x2) - (block(x) - x)).abs().amax(-1)[0]
        still = torch.ones(length, dtype=torch.bool)
        still[moved] = False
        assert torch.all(delta[moved] > 0) and torch.all(delta[still] == 0), (silenced, k, delta)


def test_block_is_symmetric_when_both_mixers_share_weights():
    """Same weights both ways: reversing the input reverses the output."""
    block = _block(0)
    block.backward_block.load_state_dict(block.forward_block.state_dict())
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x.flip(1)), block(x).flip(1), atol=1e-14, rtol=1e-12)
        assert (block(x) - block(x.flip(1))).abs().max() > 1e-3  # the sequence itself is not symmetric
