"""Hypothesis properties of VidEoMT: 4D/5D equivalence (with masks in every layout), T=1 equals
the single-frame path, frame 0 ignores ``query_updater``, and every invalid mask raises."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from candidates.videomt import VidEoMT, VidEoMTConfig
from harness import randomize_

SETTINGS = settings(deadline=None)


@st.composite
def setups(draw, backbone=None):
    backbone = backbone or draw(st.sampled_from(["dinov2", "dinov3"]))
    heads = draw(st.sampled_from([1, 2]))
    layers = draw(st.integers(1, 3))
    patch = draw(st.sampled_from([2, 4]))
    config = VidEoMTConfig(
        backbone=backbone, hidden_size=16, num_heads=heads, intermediate_size=draw(st.sampled_from([16, 32])),
        num_layers=layers, num_blocks=draw(st.integers(1, layers)), patch_size=patch,
        image_size=patch * draw(st.integers(2, 4)), num_register_tokens=draw(st.integers(0, 2)),
        num_queries=draw(st.integers(1, 4)), num_labels=3, num_upscale_blocks=draw(st.integers(0, 2)),
        key_bias=backbone == "dinov2", masked_attention=backbone == "dinov3" and draw(st.booleans()),
    )
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    model = VidEoMT(config).double().eval()
    randomize_(model, torch.Generator().manual_seed(seed))
    b, t = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    g = torch.Generator().manual_seed(seed + 1)
    video = torch.randn(b, t, 3, config.image_size, config.image_size, generator=g, dtype=torch.float64)
    mask = torch.rand(b, t, config.grid_size, config.grid_size, generator=g) < 0.3
    return model, video, mask


def _mask_layouts(mask: torch.Tensor) -> tuple[dict, dict]:
    """The same (B, T, Hp, Wp) mask in every accepted layout, for 5D input and for 4D input."""
    b, t, hp, wp = mask.shape
    video = {"(B,T,Hp,Wp)": mask, "(B,T,N)": mask.reshape(b, t, -1), "(B*T,N)": mask.reshape(b * t, -1)}
    frames = {"(F,N)": mask.reshape(b * t, -1), "(F,Hp,Wp)": mask.reshape(b * t, hp, wp)}
    return video, frames


def _pre_query_states(model: VidEoMT, pixels: torch.Tensor, mask) -> list[torch.Tensor]:
    """Embedding output and the output of every pre-query layer, captured by hooks."""
    states, start = [], model.config.num_layers - model.config.num_blocks
    hooks = [m.register_forward_hook(lambda _m, _a, out: states.append(out))
             for m in (model.embeddings, *model.layers[:start])]
    try:
        with torch.no_grad():
            model(pixels, bool_masked_pos=mask)
    finally:
        for h in hooks:
            h.remove()
    return states[: start + 1]


@pytest.mark.property
@SETTINGS
@given(setups())
def test_videomt_5d_and_flat_4d_agree_without_masks(setup):
    model, video, _ = setup
    five = _pre_query_states(model, video, None)
    four = _pre_query_states(model, video.flatten(0, 1), None)
    assert len(five) == len(four) == model.config.num_layers - model.config.num_blocks + 1
    assert all(torch.equal(a, b) for a, b in zip(five, four))


@pytest.mark.property
@SETTINGS
@given(setups(backbone="dinov2"))
def test_videomt_5d_and_flat_4d_agree_with_masks_in_every_layout(setup):
    model, video, mask = setup
    video_layouts, frame_layouts = _mask_layouts(mask)
    baseline = _pre_query_states(model, video, mask)
    unmasked = _pre_query_states(model, video, None)
    if mask.any():  # the mask is live: masked embeddings differ from unmasked ones
        assert not torch.equal(baseline[0], unmasked[0])
    for layout in video_layouts.values():
        assert all(torch.equal(a, b) for a, b in zip(_pre_query_states(model, video, layout), baseline))
    for layout in frame_layouts.values():
        states = _pre_query_states(model, video.flatten(0, 1), layout)
        assert all(torch.equal(a, b) for a, b in zip(states, baseline))


@pytest.mark.property
@SETTINGS
@given(setups(), st.booleans())
def test_videomt_single_frame_clip_equals_image_path(setup, masked):
    model, video, mask = setup
    video, mask = video[:, :1], mask[:, :1]
    mask5 = mask if masked and model.config.backbone == "dinov2" else None
    mask4 = None if mask5 is None else mask5.flatten(0, 1)
    with torch.no_grad():
        clip, image = model(video, bool_masked_pos=mask5), model(video[:, 0], bool_masked_pos=mask4)
    assert all(torch.equal(a, b) for a, b in zip(clip, image))


@pytest.mark.property
@SETTINGS
@given(setups())
def test_videomt_frame0_ignores_query_updater_later_frames_do_not(setup):
    model, video, _ = setup
    b, t = video.shape[:2]
    with torch.no_grad():
        before = model(video)
        model.query_updater.weight.mul_(-3.0).add_(0.5)
        model.query_updater.bias.add_(1.0)
        after = model(video)
    for x, y in zip(before, after):
        assert torch.equal(x[:b], y[:b])  # frame 0 of every clip: bitwise unchanged
        if t > 1:
            assert (x[b:] - y[b:]).abs().max() > 1e-9  # frames >= 1 depend on the updater


def _invalid_masks(mask: torch.Tensor) -> list[tuple[torch.Tensor, str]]:
    b, t, hp, wp = mask.shape
    n = hp * wp
    flat = mask.reshape(b * t, n)
    return [
        (flat.to(torch.uint8), "must be a torch.bool tensor, got torch.uint8"),
        (flat.float(), "must be a torch.bool tensor, got torch.float32"),
        (flat.long(), "must be a torch.bool tensor, got torch.int64"),
        (torch.zeros(b * t + 1, n, dtype=torch.bool), "batch does not match the input"),
        (torch.zeros(b + 1, t, n, dtype=torch.bool), "batch does not match the input"),
        (torch.zeros(b, t + 1, hp, wp, dtype=torch.bool), "batch does not match the input"),
        (torch.zeros(b, t + 1, n, dtype=torch.bool), "batch does not match the input"),  # one frame too many
        (torch.zeros(b + 1, t + 1, n, dtype=torch.bool), "batch does not match the input"),
        (torch.zeros(b * t, n + 1, dtype=torch.bool), "token count does not match"),
        (torch.zeros(b, t, n - 1, dtype=torch.bool), "token count does not match"),
        (torch.zeros(b, t, hp, wp + 1, dtype=torch.bool), "token count does not match"),
        (torch.zeros(b * t * n, dtype=torch.bool), "got rank 1"),
        (mask[None], "got rank 5"),
    ]


@pytest.mark.property
@SETTINGS
@given(setups(backbone="dinov2"))
def test_videomt_every_invalid_mask_raises(setup):
    model, video, mask = setup
    for bad, message in _invalid_masks(mask):
        with pytest.raises(ValueError, match=message):
            model(video, bool_masked_pos=bad)
        with pytest.raises(ValueError, match=message.replace("rank 5", "rank").replace("rank 1", "rank")):
            model.embeddings(video, bad)
    b, t, hp, wp = mask.shape
    frame_bad = [torch.zeros(b * t, hp, wp + 1, dtype=torch.bool), torch.zeros(b * t + 1, hp * wp, dtype=torch.bool),
                 mask, torch.zeros(b * t, hp * wp, dtype=torch.int32)]
    for bad in frame_bad:  # 4D input: (F, N) and (F, Hp, Wp) only; (B, T, Hp, Wp) is rank 4 -> invalid
        with pytest.raises(ValueError, match="bool_masked_pos"):
            model(video.flatten(0, 1), bool_masked_pos=bad)
