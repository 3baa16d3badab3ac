"""VidEoMT unit tests: output layout, temporal propagation, masked attention, guardrails."""

import dataclasses
import re

import pytest
import torch

from candidates.videomt import (
    VARIANTS, QueryPropagation, VidEoMT, VidEoMTConfig, videomt_dinov3_small_config, videomt_dinov3_tiny,
    videomt_dinov3_tiny_config, videomt_small_config, videomt_tiny, videomt_tiny_config,
)
from harness import randomize_


def _model(factory=videomt_tiny, seed=0, **overrides) -> VidEoMT:
    torch.manual_seed(seed)  # default inits draw from the global RNG; randomize_ adds to them
    model = factory(**overrides).double().eval()
    randomize_(model, torch.Generator().manual_seed(seed))
    return model


def _video(b=2, t=3, size=16, seed=1):
    return torch.randn(b, t, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("factory", [videomt_tiny, videomt_dinov3_tiny])
def test_videomt_output_layout_is_frame_major(factory):
    model, video = _model(factory), _video()
    with torch.no_grad():
        out = model(video)
        first = model(video[:, :1])
    b, t = video.shape[:2]
    q, hw = model.config.num_queries, 4 * model.config.grid_size
    assert out.masks_queries_logits.shape == (t * b, q, hw, hw)
    assert out.class_queries_logits.shape == (t * b, q, model.config.num_labels + 1)
    assert out.last_hidden_state.shape == (t * b, q + model.config.num_prefix_tokens + model.config.num_patches, 32)
    for got, want in zip(out, first):  # rows [0, B) are frame 0 of every clip
        # equal up to float64 rounding: the pre-query layers see 6 frames vs 2 (other matmul blocking)
        torch.testing.assert_close(got[:b], want, rtol=1e-12, atol=1e-12)


def test_videomt_later_frames_use_propagated_queries():
    """Frame 1 of a clip is not frame 1 run alone: its queries come from frame 0."""
    model, video = _model(), _video()
    with torch.no_grad():
        joint = model(video).class_queries_logits[2:4]
        alone = model(video[:, 1:2]).class_queries_logits
    assert (joint - alone).abs().max() > 1e-3


def test_videomt_list_of_frames_equals_5d():
    model, video = _model(), _video()
    with torch.no_grad():
        a, b = model(video), model(list(video.unbind(1)))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_videomt_dinov3_masked_attention_is_live_and_probs_zero_disable_it():
    masked, video = _model(videomt_dinov3_tiny), _video(t=1)
    unmasked = _model(videomt_dinov3_tiny, masked_attention=False)
    with torch.no_grad():
        a, b = masked(video).masks_queries_logits, unmasked(video).masks_queries_logits
        assert (a - b).abs().max() > 1e-6
        masked.attn_mask_probs.zero_()
        assert torch.equal(masked(video).masks_queries_logits, b)


def test_videomt_fractional_attn_mask_prob_raises():
    model = _model(videomt_dinov3_tiny)
    model.attn_mask_probs[0] = 0.5
    with pytest.raises(ValueError, match=r"attn_mask_probs entries must be 0 or 1 at inference, got 0.5"):
        model(_video(t=1))


@pytest.mark.parametrize("kwargs, message", [
    (dict(mask_labels=[torch.zeros(1, 16, 16)]), "training labels are not supported"),
    (dict(class_labels=[torch.zeros(1, dtype=torch.long)]), "training labels are not supported"),
    (dict(patch_offsets=[torch.zeros(4)]), "patch_offsets cannot be combined with 5D video input"),
])
def test_videomt_5d_guardrails(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _model()(_video(), **kwargs)


def test_videomt_patch_offsets_with_4d_input_raises():
    """EoMT only echoes patch_offsets into its output; ours has no field for them: refuse, not drop."""
    with pytest.raises(ValueError, match="patch_offsets is not supported: .* expected None, got list"):
        _model()(_video()[:, 0], patch_offsets=[torch.zeros(4)])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_videomt_integer_pixels_raise(dtype):
    message = re.escape(f"pixel_values must be a floating-point tensor (normalized pixels), got {dtype}")
    model = _model()
    with pytest.raises(TypeError, match=message):
        model(torch.zeros(1, 2, 3, 16, 16, dtype=dtype))
    with pytest.raises(TypeError, match=message):
        model.embeddings(torch.zeros(2, 3, 16, 16, dtype=dtype))


@pytest.mark.parametrize("shape, layout", [
    ((0, 2, 3, 16, 16), "(B, T)"), ((2, 0, 3, 16, 16), "(B, T)"), ((0, 3, 16, 16), "(B*T,)"),
])
def test_videomt_empty_batch_or_no_frames_raise(shape, layout):
    message = re.escape(f"pixel_values must hold at least one frame: expected {layout} >= 1, got shape {shape}")
    model = _model()
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape, dtype=torch.float64))
    with pytest.raises(ValueError, match=message):
        model.embeddings(torch.zeros(shape, dtype=torch.float64))


def test_videomt_list_of_empty_frames_raises():
    with pytest.raises(ValueError, match=re.escape("expected (B, T) >= 1, got shape (0, 2, 3, 16, 16)")):
        _model()([torch.zeros(0, 3, 16, 16, dtype=torch.float64)] * 2)


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 2, 2, 3, 16, 16)])
def test_videomt_wrong_rank_raises(shape):
    with pytest.raises(ValueError, match=r"pixel_values must be \(B, T, C, H, W\) or \(B\*T, C, H, W\), got shape"):
        _model()(torch.zeros(shape, dtype=torch.float64))


def test_videomt_frames_of_different_sizes_raise():
    frames = [torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 12, 12)]
    with pytest.raises(ValueError, match=r"all frames must have the same size, got frame shapes"):
        _model()(frames)


def test_videomt_frame_size_must_match_config():
    with pytest.raises(ValueError, match=r"frames must be \(C, H, W\)=\(3, 16, 16\) .* got \(3, 12, 12\)"):
        _model()(torch.zeros(1, 2, 3, 12, 12, dtype=torch.float64))


def test_videomt_pixel_values_type_checked():
    with pytest.raises(TypeError, match="pixel_values must be a Tensor or a list of frames, got ndarray"):
        _model()(_video().numpy())
    with pytest.raises(TypeError, match=r"a list of frames must hold one or more \(B, C, H, W\) tensors, got \[\]"):
        _model()([])


def test_videomt_dinov3_rejects_bool_masked_pos():
    with pytest.raises(ValueError, match="the dinov3 backbone has none"):
        _model(videomt_dinov3_tiny)(_video(), bool_masked_pos=torch.zeros(2, 3, 16, dtype=torch.bool))


@pytest.mark.parametrize("overrides, error, message", [
    (dict(backbone="vit"), ValueError, "backbone must be one of 'dinov2', 'dinov3', got 'vit'"),
    (dict(num_heads=3), ValueError, r"num_heads must be a divisor of hidden_size \(32\), got 3"),
    (dict(num_blocks=4), ValueError, r"num_blocks must be at most num_layers \(3\), got 4"),
    (dict(image_size=18), ValueError, r"image_size must be a multiple of patch_size \(4\), got 18"),
    (dict(hidden_act="tanh"), ValueError, "hidden_act must be one of 'gelu', 'relu', 'silu', got 'tanh'"),
    (dict(backbone="dinov3", hidden_size=24, num_heads=4), ValueError,
     r"num_heads must be one of \[1, 2, 3, 6\], leaving head_dim = 24 / num_heads divisible by 4, got 4"),
    (dict(num_layers=0), ValueError, "num_layers must be an int >= 1, got 0"),
    (dict(num_layers=True), TypeError, "num_layers must be an int >= 1, got bool True"),  # bool is no int here
    (dict(num_queries=5.0), TypeError, "num_queries must be an int >= 1, got float 5.0"),
    (dict(num_register_tokens=-1), ValueError, "num_register_tokens must be an int >= 0, got -1"),
    (dict(num_upscale_blocks=False), TypeError, "num_upscale_blocks must be an int >= 0, got bool False"),
    (dict(layer_norm_eps=-1e-6), ValueError, "layer_norm_eps must be a finite number > 0, got -1e-06"),
    (dict(layer_norm_eps=0.0), ValueError, "layer_norm_eps must be a finite number > 0, got 0.0"),
    (dict(layer_norm_eps=True), TypeError, "layer_norm_eps must be a finite number > 0, got bool True"),
    (dict(rope_theta=float("nan")), ValueError, "rope_theta must be a finite number > 0, got nan"),
    (dict(rope_theta=float("inf")), ValueError, "rope_theta must be a finite number > 0, got inf"),
    (dict(rope_theta=-100.0), ValueError, "rope_theta must be a finite number > 0, got -100.0"),
    (dict(rope_theta="100"), TypeError, "rope_theta must be a finite number > 0, got str '100'"),
    (dict(key_bias=1), TypeError, "key_bias must be a bool, got int 1"),
    (dict(masked_attention="yes"), TypeError, "masked_attention must be a bool, got str 'yes'"),
])
def test_videomt_config_validation(overrides, error, message):
    with pytest.raises(error, match=f"^VidEoMTConfig.{message}"):
        VidEoMTConfig(**overrides)


def test_videomt_variants_are_read_only():
    with pytest.raises(TypeError):
        VARIANTS["huge"] = VARIANTS["small"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        VARIANTS["small"].hidden_size = 768  # type: ignore[misc]


@pytest.mark.parametrize("name, factory", [("tiny", videomt_tiny_config), ("dinov3_tiny", videomt_dinov3_tiny_config),
                                           ("small", videomt_small_config),
                                           ("dinov3_small", videomt_dinov3_small_config)])
def test_videomt_config_factories_are_the_variants_with_overrides(name, factory):
    assert factory() == VARIANTS[name]
    assert factory(image_size=224) == dataclasses.replace(VARIANTS[name], image_size=224)
    with pytest.raises(ValueError, match=r"image_size must be a multiple of patch_size"):
        factory(image_size=18)  # overrides are validated like any config


def test_videomt_query_propagation_keeps_the_reference_keys():
    """QueryPropagation is the model's ``query_updater``: state-dict keys unchanged (weights convert by
    identity), the frame-0 queries are the learned ones and later ones add the update."""
    model = _model()
    assert isinstance(model.query_updater, QueryPropagation)
    assert {k for k in model.state_dict() if k.startswith("query")} == {
        "query.weight", "query_updater.weight", "query_updater.bias"}
    learned, previous = model.query.weight, torch.randn(2, model.config.num_queries, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(model.query_updater.frame_queries(learned, None, 2), learned.expand(2, -1, -1))
        assert torch.equal(model.query_updater.frame_queries(learned, previous, 2),
                           torch.nn.functional.linear(previous, model.query_updater.weight,
                                                      model.query_updater.bias) + learned)
