"""DINOv3 encoder: config validation, the two key mappings, the true patch grid, RoPE behaviour, bf16 autocast."""

from dataclasses import replace

import pytest
import torch

from candidates.vlm.dinov3 import (
    VARIANTS, DinoV3Config, DinoV3ViT, RopeEmbedding, convert_timm_state_dict,
    convert_transformers_state_dict, patch_center_coords,
)
from candidates.vlm.projector import ModalityProjector, ProjectorConfig
from harness import randomize_
from reference.dinov3 import TINY, TINY_TIMM, timm_dinov3, transformers_dinov3


def live_model(config: DinoV3Config = TINY, seed: int = 0) -> DinoV3ViT:
    """float64 model with O(1) weights everywhere (the upstream init would make attention near-uniform)."""
    model = DinoV3ViT(config).double().eval()
    randomize_(model, torch.Generator().manual_seed(seed))
    return model


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides, message", [
    ({"embed_dim": 30, "num_heads": 4}, "divisible by num_heads"),
    ({"embed_dim": 36, "num_heads": 2}, "head_dim divisible by 4"),
    ({"depth": 0}, "depth must be an int >= 1"),
    ({"num_reg_tokens": -1}, "num_reg_tokens must be an int >= 0"),
    ({"rope_impl": "cat"}, "rope_impl must be 'periods' or 'inv_freq'"),
    ({"rope_theta": 0.0}, "rope_theta must be > 0"),
])
def test_vlm_config_rejects(overrides, message):
    with pytest.raises(ValueError, match=message):
        replace(TINY, **overrides)


def test_vlm_input_size_errors_name_expected_and_got():
    model = DinoV3ViT(TINY)
    with pytest.raises(ValueError, match=r"multiples of the patch size 16, got 64x40"):
        model(torch.zeros(1, 3, 64, 40))
    with pytest.raises(ValueError, match=r"must be \(B, 3, H, W\), got shape \(3, 64, 64\)"):
        model(torch.zeros(3, 64, 64))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        model([[0.0]])


# --------------------------------------------------------------------------- key mapping


def _snapshot(state):
    return {k: v.clone() for k, v in state.items()}


@pytest.mark.parametrize("config", [TINY, VARIANTS["vit_small_patch16_dinov3_qkvb"]], ids=["tiny", "small"])
def test_vlm_transformers_mapping_is_pure_and_complete(config):
    reference = transformers_dinov3(replace(config, rope_impl="inv_freq"))
    state = reference.state_dict()
    before = _snapshot(state)
    converted = convert_transformers_state_dict(state)
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in state)
    candidate = DinoV3ViT(config)
    assert converted.keys() == candidate.state_dict().keys()
    candidate.load_state_dict(converted, strict=True)
    dim = config.embed_dim
    attn = reference.model.layer[1].attention
    qkv = candidate.blocks[1].attn.qkv.weight
    assert torch.equal(qkv[:dim], attn.q_proj.weight) and torch.equal(qkv[dim:2 * dim], attn.k_proj.weight)
    assert torch.equal(qkv[2 * dim:], attn.v_proj.weight)
    assert torch.equal(candidate.blocks[1].attn.v_bias, attn.v_proj.bias)
    assert torch.equal(candidate.reg_token, reference.embeddings.register_tokens)


@pytest.mark.parametrize("variant, config", [
    ("vit_small_patch16_dinov3", TINY_TIMM), ("vit_small_patch16_dinov3_qkvb", replace(TINY_TIMM, qkv_bias=True)),
])
def test_vlm_timm_mapping_is_pure_and_complete(variant, config):
    reference = timm_dinov3(config, variant=variant)
    state = reference.state_dict()
    before = _snapshot(state)
    converted = convert_timm_state_dict(state)
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in state)
    candidate = DinoV3ViT(config)
    candidate.load_state_dict(converted, strict=True)
    assert torch.equal(candidate.blocks[0].ls2.gamma, reference.blocks[0].gamma_2)
    # a classifier head is dropped, a zero key bias is accepted
    extra = dict(state, **{"head.weight": torch.zeros(3, 32), "blocks.0.attn.k_bias": torch.zeros(32)})
    assert convert_timm_state_dict(extra).keys() == converted.keys()


@pytest.mark.parametrize("extra, message", [
    ({"model.layer.0.mlp.gate_proj.weight": torch.zeros(1)}, "unsupported transformers DINOv3 keys"),
    ({"model.layer.0.attention.k_proj.bias": torch.zeros(32)}, "a key bias is not supported"),
])
def test_vlm_transformers_mapping_rejects(extra, message):
    state = dict(transformers_dinov3(TINY).state_dict(), **extra)
    with pytest.raises(ValueError, match=message):
        convert_transformers_state_dict(state)


def test_vlm_transformers_mapping_rejects_lone_query_bias():
    state = dict(transformers_dinov3(TINY).state_dict())
    del state["model.layer.0.attention.v_proj.bias"]
    with pytest.raises(ValueError, match="both be present or both absent"):
        convert_transformers_state_dict(state)


@pytest.mark.parametrize("extra, message", [
    ({"pos_embed": torch.zeros(1, 5, 32)}, "unsupported timm DINOv3 keys"),
    ({"blocks.0.attn.k_bias": torch.ones(32)}, "non-zero key bias"),
])
def test_vlm_timm_mapping_rejects(extra, message):
    state = dict(timm_dinov3(TINY_TIMM).state_dict(), **extra)
    with pytest.raises(ValueError, match=message):
        convert_timm_state_dict(state)


# --------------------------------------------------------------------------- grid and RoPE


def test_vlm_patch_grid_comes_from_patch_embedding():
    model = DinoV3ViT(TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 48, 112))
    assert out.patch_grid == (3, 7)
    assert out.last_hidden_state.shape == (1, 5 + 21, 32) and out.patch_tokens.shape == (1, 21, 32)


def test_vlm_patch_center_coords():
    coords = patch_center_coords((2, 4))
    assert coords.dtype == torch.float32 and coords.shape == (8, 2)
    assert coords[:, 0].tolist() == [-0.5] * 4 + [0.5] * 4  # rows: centres of 2 bands in [-1, 1]
    assert coords[:4, 1].tolist() == [-0.75, -0.25, 0.25, 0.75]  # columns: centres of 4 bands


@pytest.mark.parametrize("impl", ["periods", "inv_freq"])
def test_vlm_rope_tables_computed_in_float32_then_cast(impl):
    rope = RopeEmbedding(16, theta=100.0, impl=impl)
    cos32, sin32 = rope((12, 20), dtype=torch.float32, device="cpu")
    cos16, sin16 = rope((12, 20), dtype=torch.bfloat16, device="cpu")
    assert cos16.dtype == torch.bfloat16
    assert torch.equal(cos16, cos32.to(torch.bfloat16)) and torch.equal(sin16, sin32.to(torch.bfloat16))
    # ...which is not what computing the angles in bfloat16 would give
    angles_bf16 = torch.atan2(sin32, cos32).to(torch.bfloat16)
    assert not torch.equal(angles_bf16.float().cos().to(torch.bfloat16), cos16)
    # a model cast to bfloat16 keeps float32 periods (they are rebuilt, never stored)
    assert rope.periods().dtype == torch.float32 and not list(rope.buffers())


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
    """Seed test plan "AMP at 768, no NaNs": a bf16 autocast forward and backward at 512x768
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
