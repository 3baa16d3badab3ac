"""Masked inputs against the reference: ``VidEoMT.embeddings`` vs transformers' ``VideomtEmbeddings``.

``VideomtForUniversalSegmentation.forward`` swallows ``bool_masked_pos`` through ``**kwargs`` (it
never reaches its embeddings), so masks cannot be compared model to model; the embeddings modules
can, with the very weights of the ``videomt`` pair (its mask token re-drawn, hence live). The
candidate must agree on every mask layout it accepts, for 5D and for flattened 4D input.
"""

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import harness


@functools.cache
def _built() -> tuple[torch.nn.Module, torch.nn.Module]:
    """The ``videomt`` pair in float64 (built once: hypothesis examples share it, read-only)."""
    return harness.get_pair("videomt").build(dtype=torch.float64)


def _layouts(mask: torch.Tensor) -> dict[str, tuple[bool, torch.Tensor]]:
    """A (B, T, Hp, Wp) mask in every accepted layout: name -> (for 5D input?, mask)."""
    b, t, hp, wp = mask.shape
    return {
        "(B,T,N)": (True, mask.reshape(b, t, hp * wp)),
        "(B*T,N)": (True, mask.reshape(b * t, hp * wp)),
        "(B,T,Hp,Wp)": (True, mask),
        "(F,N)": (False, mask.reshape(b * t, hp * wp)),
        "(F,Hp,Wp)": (False, mask.reshape(b * t, hp, wp)),
    }


@pytest.mark.parity
@pytest.mark.property
@settings(deadline=None)
@given(b=st.integers(1, 3), t=st.integers(1, 3), density=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
       seed=st.integers(0, 2**16))
def test_videomt_embeddings_parity_with_masks_in_every_layout(b, t, density, seed):
    candidate, reference = _built()
    config = candidate.config
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(b, t, config.num_channels, config.image_size, config.image_size, generator=g,
                        dtype=torch.float64)
    mask = torch.rand(b, t, config.grid_size, config.grid_size, generator=g) < density
    with torch.no_grad():
        unmasked = candidate.embeddings(video)
        for name, (five_d, layout) in _layouts(mask).items():
            pixels = video if five_d else video.flatten(0, 1)
            ours, theirs = candidate.embeddings(pixels, layout), reference.embeddings(pixels, layout)
            tokens = config.num_prefix_tokens + config.num_patches
            assert ours.shape == theirs.shape == (b * t, tokens, config.hidden_size)
            assert torch.equal(ours, theirs), name  # bitwise: the same ops in the same order
            # the mask is live: masked positions, and only those, differ from the unmasked embeddings
            changed = (ours != unmasked).any(-1)[:, config.num_prefix_tokens:]  # (F, N)
            assert torch.equal(changed, mask.reshape(b * t, -1)), name


@pytest.mark.parity
def test_videomt_parity_reference_model_ignores_bool_masked_pos_ours_applies_it():
    """The documented model-level difference: the reference drops the mask, we apply it."""
    candidate, reference = _built()
    config = candidate.config
    video = torch.randn(2, 2, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    mask = torch.zeros(2, 2, config.num_patches, dtype=torch.bool)
    mask[:, :, ::3] = True
    with torch.no_grad():
        plain = reference(pixel_values_videos=video).class_queries_logits
        swallowed = reference(pixel_values_videos=video, bool_masked_pos=mask).class_queries_logits
        ours_plain = candidate(video).class_queries_logits
        ours_masked = candidate(video, bool_masked_pos=mask).class_queries_logits
    assert torch.equal(plain, swallowed)
    assert torch.equal(ours_plain, plain)
    assert (ours_masked - plain).abs().max() > 1e-6
