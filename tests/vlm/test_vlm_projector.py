"""Modality projector: 2D pixel shuffle (vs F.pixel_unshuffle), inverse, legacy square path, errors."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from candidates.vlm.projector import (
    ModalityProjector, ProjectorConfig, pixel_shuffle_2d, pixel_shuffle_square, pixel_unshuffle_2d,
)
from reference.vlm import UnshufflePixels

grids = st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 4), st.integers(1, 3), st.integers(1, 2))


def _tokens(batch, n, dim, seed=0):
    return torch.randn(batch, n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _patch_tokens(case):
    """(tokens, patch grid, factor) for a drawn (Gh, Gw, factor, width, batch): a grid of Gh x Gw blocks."""
    gh, gw, s, dim, batch = case
    return _tokens(batch, gh * s * gw * s, dim), (gh * s, gw * s), s


@pytest.mark.property
@settings(deadline=None)
@given(grids)
def test_vlm_shuffle_2d_is_a_permutation_of_pixel_unshuffle(case):
    x, grid, s = _patch_tokens(case)
    ours = pixel_shuffle_2d(x, grid, s)
    assert ours.shape == (x.shape[0], x.shape[1] // (s * s), s * s * x.shape[2])
    assert torch.equal(ours, UnshufflePixels()(x, grid, s))


@pytest.mark.property
@settings(deadline=None)
@given(grids)
def test_vlm_shuffle_2d_inverse_restores_tokens(case):
    x, grid, s = _patch_tokens(case)
    folded = pixel_shuffle_2d(x, grid, s)
    assert torch.equal(pixel_unshuffle_2d(folded, (grid[0] // s, grid[1] // s), s), x)


@pytest.mark.property
@settings(deadline=None)
@given(st.integers(1, 6), st.integers(1, 3), st.integers(1, 3))
def test_vlm_square_2d_shuffle_equals_legacy(g, s, dim):
    """The 2D shuffle on a square grid is nanoVLM's square shuffle (so its weights load unchanged);
    the legacy function is its own formulation, and both agree with F.pixel_unshuffle."""
    x = _tokens(2, (g * s) ** 2, dim)
    legacy = pixel_shuffle_square(x, s)
    assert legacy.shape == (2, g * g, s * s * dim)
    assert torch.equal(pixel_shuffle_2d(x, (g * s, g * s), s), legacy)
    assert torch.equal(UnshufflePixels()(x, (g * s, g * s), s), legacy)


def test_vlm_legacy_square_shuffle_order():
    """4x4 grid, s=2, one channel: block (0, 0) holds tokens 0, 1, 4, 5 (row in block, then column)."""
    x = torch.arange(16.0).reshape(1, 16, 1)
    assert pixel_shuffle_square(x, 2).tolist() == [[
        [0.0, 1.0, 4.0, 5.0], [2.0, 3.0, 6.0, 7.0], [8.0, 9.0, 12.0, 13.0], [10.0, 11.0, 14.0, 15.0],
    ]]
    with pytest.raises(ValueError, match="grid 4x4 is not divisible by the pixel-shuffle factor 3"):
        pixel_shuffle_square(x, 3)


def test_vlm_projector_legacy_path_equals_explicit_square_grid():
    projector = ModalityProjector(ProjectorConfig(vision_dim=4, text_dim=6, factors=(2,), num_prefix_tokens=1)).double()
    x = _tokens(2, 1 + 36, 4)
    assert torch.equal(projector(x), projector(x, (6, 6)))


def test_vlm_projector_accepts_int_like_grids():
    projector = ModalityProjector(ProjectorConfig(vision_dim=4, text_dim=6, factors=(2,))).double()
    x = _tokens(1, 4 * 6, 4)
    expected = projector(x, (4, 6))
    assert torch.equal(projector(x, (np.int64(4), np.int64(6))), expected)
    assert torch.equal(projector(x, torch.tensor([4, 6])), expected)
    with pytest.raises(TypeError, match=r"^grid must be \(rows, columns\), two ints >= 1, got tuple \(4.0, 6.0\)$"):
        projector(x, (4.0, 6.0))
    with pytest.raises(TypeError, match=r"^grid must be \(rows, columns\), two ints >= 1, got int 24$"):
        projector(x, 24)
    with pytest.raises(TypeError, match=r"^grid must be \(rows, columns\), two ints >= 1, got str 'ab'$"):
        projector(x, "ab")
    with pytest.raises(ValueError, match=r"^grid must be \(rows, columns\), two ints >= 1, got \(0, 24\)$"):
        projector(x, (0, 24))


def test_vlm_shuffle_order_is_row_column_channel():
    """Grid 2x4, s=2, one channel: tokens 0..7 fold into [0, 1, 4, 5] and [2, 3, 6, 7]."""
    x = torch.arange(8.0).reshape(1, 8, 1)
    assert pixel_shuffle_2d(x, (2, 4), 2).tolist() == [[[0.0, 1.0, 4.0, 5.0], [2.0, 3.0, 6.0, 7.0]]]
    y = torch.arange(8.0).reshape(1, 4, 2)  # 2x2 grid, two channels: (token, channel)
    assert pixel_shuffle_2d(y, (2, 2), 2).tolist() == [[[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]]


def test_vlm_projector_drops_prefix_and_projects_rectangular_grids():
    config = ProjectorConfig(vision_dim=8, text_dim=12, factors=(2, 4), num_prefix_tokens=5)
    projector = ModalityProjector(config).double()
    x = _tokens(2, 5 + 40 * 60, 8)
    assert projector(x, (40, 60), factor=4).shape == (2, 10 * 15, 12)  # a 640x960 high-resolution image
    assert projector(x, (40, 60)).shape == (2, 20 * 30, 12)  # default factor 2
    # prefix tokens never reach the output: changing them changes nothing
    y = x.clone()
    y[:, :5] = 0
    assert torch.equal(projector(x, (40, 60)), projector(y, (40, 60)))
    # one projection per configured factor, nanoVLM style (no bias)
    assert {k: tuple(v.shape) for k, v in projector.state_dict().items()} == {
        "proj.s2.weight": (12, 32), "proj.s4.weight": (12, 128)}


@pytest.mark.parametrize("call, message", [
    (lambda p: p(_tokens(1, 5 + 24, 8)), r"square token count, got 24; pass grid=\(Hp, Wp\)"),
    (lambda p: p(_tokens(1, 5 + 24, 8), (4, 5)), r"token count 24 does not match grid 4x5 = 20"),
    (lambda p: p(_tokens(1, 5 + 24, 8), (4, 6), factor=4), r"grid 4x6 is not divisible by the pixel-shuffle factor 4"),
    (lambda p: p(_tokens(1, 5 + 24, 8), (4, 6), factor=3), r"factor 3 is not configured; expected one of \(2, 4\)"),
    (lambda p: p(_tokens(1, 5 + 24, 7), (4, 6)), r"tokens must be \(B, N, 8\), got shape \(1, 29, 7\)"),
])
def test_vlm_projector_errors(call, message):
    projector = ModalityProjector(ProjectorConfig(vision_dim=8, text_dim=12, factors=(2, 4), num_prefix_tokens=5)).double()
    with pytest.raises(ValueError, match=message):
        call(projector)


@pytest.mark.parametrize("kwargs, message", [
    ({"factors": ()}, "non-empty tuple of distinct ints"),
    ({"factors": (2, 2)}, "non-empty tuple of distinct ints"),
    ({"num_prefix_tokens": -1}, "num_prefix_tokens must be an int >= 0"),
    ({"text_dim": 0}, "text_dim must be an int >= 1"),
])
def test_vlm_projector_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProjectorConfig(**{"vision_dim": 8, "text_dim": 12, **kwargs})
