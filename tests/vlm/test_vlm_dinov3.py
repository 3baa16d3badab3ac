"""DINOv3 encoder: config and variants, the true patch grid, RoPE behaviour in the model, bf16 autocast.

The weight layouts are tested in test_vlm_convert.py, the shared RoPE primitives in tests/candidates/test_layers.py."""

from dataclasses import replace

import pytest
import torch

from candidates.vlm.dinov3 import VARIANTS, DinoV3Config, DinoV3ViT, dinov3_vit
from candidates.vlm.projector import ModalityProjector, ProjectorConfig
from harness import randomize_
from reference.vlm import TINY


def live_model(config: DinoV3Config = TINY, seed: int = 0) -> DinoV3ViT:
    """float64 model with O(1) weights everywhere (the upstream init would make attention near-uniform)."""
    model = DinoV3ViT(config).double().eval()
    randomize_(model, torch.Generator().manual_seed(seed))
    return model


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides, message", [
    ({"embed_dim": 30, "num_heads": 4}, r"num_heads must be a divisor of embed_dim 30, got 4"),
    ({"embed_dim": 36, "num_heads": 2}, r"num_heads must be a count leaving head_dim = 36 / num_heads divisible by 4"),
    ({"depth": 0}, r"DinoV3Config.depth must be an int >= 1, got 0"),
    ({"num_reg_tokens": -1}, r"num_reg_tokens must be an int >= 0, got -1"),
    ({"rope_impl": "cat"}, r"rope_impl must be one of 'periods', 'inv_freq', got 'cat'"),
    ({"rope_theta": 0.0}, r"rope_theta must be a finite number > 0, got 0.0"),
])
def test_vlm_config_rejects_a_bad_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        replace(TINY, **overrides)


@pytest.mark.parametrize("overrides, message", [
    ({"depth": 2.0}, r"DinoV3Config.depth must be an int >= 1, got float 2.0"),
    ({"qkv_bias": 1}, r"DinoV3Config.qkv_bias must be a bool, got int 1"),
])
def test_vlm_config_rejects_a_wrong_type(overrides, message):
    with pytest.raises(TypeError, match=message):
        replace(TINY, **overrides)


def test_vlm_model_rejects_a_config_of_another_type():
    with pytest.raises(TypeError, match=r"config must be a DinoV3Config, got dict"):
        DinoV3ViT({"embed_dim": 32})


def test_vlm_variants_are_read_only():
    with pytest.raises(TypeError):
        VARIANTS["mine"] = TINY  # type: ignore[index]
    assert all(isinstance(config, DinoV3Config) for config in VARIANTS.values())


def test_vlm_factory_builds_a_variant_with_overrides():
    model = dinov3_vit("dinov3_tiny", depth=1)
    assert model.config == replace(VARIANTS["dinov3_tiny"], depth=1) and len(model.blocks) == 1


def test_vlm_factory_names_the_variants_when_given_an_unknown_one():
    with pytest.raises(ValueError, match=r"^DINOv3 variant must be one of 'vit_small_patch16_dinov3', .*'dinov3_tiny', got 'vit_huge'$"):
        dinov3_vit("vit_huge")


def test_vlm_input_size_errors_name_expected_and_got():
    model = DinoV3ViT(TINY)
    with pytest.raises(ValueError, match=r"^pixel_values shape must be \(B, 3, H, W\) with H, W multiples of 16, "
                                         r"got \(1, 3, 64, 40\); resize with candidates.vlm.processor.ImageProcessor$"):
        model(torch.zeros(1, 3, 64, 40))
    with pytest.raises(ValueError, match=r"^pixel_values shape must be \(B, 3, H, W\) with H, W multiples of 16, "
                                         r"got \(3, 64, 64\)$"):
        model(torch.zeros(3, 64, 64))
    with pytest.raises(TypeError, match=r"^pixel_values must be a Tensor, got list \[\[0.0\]\]$"):
        model([[0.0]])


# --------------------------------------------------------------------------- grid and RoPE


def test_vlm_patch_grid_comes_from_patch_embedding():
    model = DinoV3ViT(TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 48, 112))
    assert out.patch_grid == (3, 7)
    assert out.last_hidden_state.shape == (1, 5 + 21, 32) and out.patch_tokens.shape == (1, 21, 32)


def _first_layer_logits(model: DinoV3ViT, image: torch.Tensor) -> torch.Tensor:
    block = model.blocks[0]
    captured = {}
    handle = block.register_forward_pre_hook(lambda module, args: captured.update(x=args[0], rope=args[1]))
    with torch.no_grad():
        model(image)
        handle.remove()
        return block.attn.logits(block.norm1(captured["x"]), captured["rope"])[0]  # (heads, T, T)


def test_vlm_rope_shift_by_one_patch_changes_logits_but_keeps_relative_ones():
    model, p, prefix = live_model(), 16, TINY.num_prefix_tokens
    image = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    shifted = torch.roll(image, shifts=p, dims=-1)  # content moves one patch to the right
    hp, wp = 4, 6
    logits = _first_layer_logits(model, image)[:, prefix:, prefix:].reshape(-1, hp, wp, hp, wp)
    moved = _first_layer_logits(model, shifted)[:, prefix:, prefix:].reshape(-1, hp, wp, hp, wp)
    # the same content one patch to the right: equal logits (RoPE is relative) up to the float32
    # rounding of the patch coordinates ...
    scale = float(logits.abs().max())
    torch.testing.assert_close(moved[:, :, 1:, :, 1:], logits[:, :, :-1, :, :-1], rtol=0, atol=1e-5 * scale)
    # ... but logits at fixed token indices change a lot
    assert (moved - logits).abs().max() > 0.1 * scale


def test_vlm_rope_makes_identical_patches_distinguishable():
    """A uniform image gives identical patch tokens; only RoPE can make their logits differ."""
    model, prefix = live_model(), TINY.num_prefix_tokens
    logits = _first_layer_logits(model, torch.full((1, 3, 64, 96), 0.3, dtype=torch.float64))
    patch_logits = logits[:, prefix:, prefix:]
    spread = patch_logits.amax(-1) - patch_logits.amin(-1)  # per query, across keys
    assert spread.min() > 1e-3 * patch_logits.abs().max()


def _transposed_twin(model: DinoV3ViT) -> DinoV3ViT:
    """The model that, on a transposed image, should compute the transposed result: patch kernels
    transposed, and in every head the query/key features of the y and x frequency bands swapped."""
    twin = DinoV3ViT(model.config).double().eval()
    twin.load_state_dict(model.state_dict())
    dim, hd, heads = model.config.embed_dim, model.config.head_dim, model.config.num_heads
    q = hd // 4
    band_swap = torch.cat([torch.arange(q, 2 * q), torch.arange(q), torch.arange(3 * q, 4 * q), torch.arange(2 * q, 3 * q)])
    rows = torch.cat([band_swap + h * hd for h in range(heads)])  # within q (and within k)
    perm = torch.cat([rows, rows + dim, torch.arange(2 * dim, 3 * dim)])
    with torch.no_grad():
        twin.patch_embed.proj.weight.copy_(model.patch_embed.proj.weight.transpose(-1, -2))
        for block, twin_block in zip(model.blocks, twin.blocks):
            twin_block.attn.qkv.weight.copy_(block.attn.qkv.weight[perm])
            twin_block.attn.q_bias.copy_(block.attn.q_bias[rows])
    return twin


def test_vlm_rope_transposed_image_gives_transposed_tokens():
    model = live_model()
    image = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        out = model(image)
        out_t = _transposed_twin(model)(image.transpose(-1, -2))
    assert out.patch_grid == (4, 6) and out_t.patch_grid == (6, 4)
    tokens = out.patch_tokens.reshape(1, 4, 6, -1)
    tokens_t = out_t.patch_tokens.reshape(1, 6, 4, -1).transpose(1, 2)  # back to (Hp, Wp) order
    torch.testing.assert_close(tokens_t, tokens, rtol=0, atol=1e-10)
    torch.testing.assert_close(out_t.last_hidden_state[:, :5], out.last_hidden_state[:, :5], rtol=0, atol=1e-10)
    # without the band swap the transposed image is NOT equivalent: RoPE sees the true axes
    plain = DinoV3ViT(model.config).double().eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        plain.patch_embed.proj.weight.copy_(model.patch_embed.proj.weight.transpose(-1, -2))
        wrong = plain(image.transpose(-1, -2)).patch_tokens.reshape(1, 6, 4, -1).transpose(1, 2)
    assert (wrong - tokens).abs().max() > 1e-3


# --------------------------------------------------------------------------- mixed precision


def test_vlm_bf16_autocast_at_512x768_is_finite_and_close_to_float32():
    """Mixed precision at high resolution stays finite: a bf16 autocast forward and backward at 512x768
    (grid 32x48, 1541 tokens) through encoder and projector, with live O(1) weights."""
    encoder = DinoV3ViT(TINY).train()
    randomize_(encoder, torch.Generator().manual_seed(0))
    projector = ModalityProjector(ProjectorConfig(TINY.embed_dim, 16, factors=(2,), num_prefix_tokens=5))
    pixels = torch.randn(1, 3, 512, 768, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(pixels)
        tokens = projector(out.last_hidden_state, out.patch_grid)
        loss = tokens.float().square().mean()
    loss.backward()
    assert tokens.dtype == torch.bfloat16 and tokens.shape == (1, 16 * 24, 16)  # autocast was on
    assert torch.isfinite(out.last_hidden_state).all() and torch.isfinite(tokens).all() and torch.isfinite(loss)
    params = dict(encoder.named_parameters()) | {f"projector.{k}": v for k, v in projector.named_parameters()}
    no_grad = sorted(name for name, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0)
    assert not no_grad, f"parameters without a gradient: {no_grad}"
    not_finite = sorted(name for name, p in params.items() if not torch.isfinite(p.grad).all())
    assert not not_finite, f"non-finite gradients: {not_finite}"
    # bf16 is only rounding: relative RMS error vs float32 of a few 1e-3 (measured 3e-3)
    with torch.no_grad():
        exact = encoder(pixels).last_hidden_state
    error = (out.last_hidden_state.detach().float() - exact).square().mean().sqrt() / exact.square().mean().sqrt()
    assert 0 < error < 2e-2
