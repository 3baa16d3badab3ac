"""Image processor, grid math, token budget, placeholders, collator; the seed's table as a golden."""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from candidates.vlm.dinov3 import DinoV3ViT
from candidates.vlm.processor import (
    IMAGENET_MEAN, IMAGENET_STD, ImageProcessor, ImageProcessorConfig, VLMCollator, expand_image_tokens,
    image_placeholder, plan_image, plan_image_with_budget,
)
from candidates.vlm.projector import ModalityProjector, ProjectorConfig
from reference.dinov3 import TINY

skimage_data = pytest.importorskip("skimage.data", reason="real-photo tests need scikit-image's sample images")
PIL_Image = pytest.importorskip("PIL.Image", reason="PIL inputs need Pillow")


# --------------------------------------------------------------------------- grid math


@pytest.mark.property
@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 3000), st.integers(1, 3000), st.sampled_from([8, 14, 16]), st.integers(1, 4),
    st.integers(64, 1600), st.booleans(),
)
def test_vlm_grid_math(height, width, patch, factor, max_size, upscale):
    unit = patch * factor
    assume(max_size >= unit)
    grid = plan_image(height, width, max_img_size=max_size, patch_size=patch, factor=factor, allow_upscale=upscale)
    assert grid.height % unit == 0 and grid.width % unit == 0
    assert unit <= min(grid.height, grid.width) and max(grid.height, grid.width) <= max_size
    hp, wp = grid.patch_grid
    assert (hp, wp) == (grid.height / patch, grid.width / patch)
    assert grid.token_grid == (hp / factor, wp / factor) and grid.num_tokens == hp * wp // factor**2
    # aspect preserved up to snapping: each side within half a unit of its scaled size (or clamped)
    scale = max_size / max(height, width) if upscale else min(1.0, max_size / max(height, width))
    for side, resized in ((height, grid.height), (width, grid.width)):
        clamped = resized in (unit, (max_size // unit) * unit)
        assert clamped or abs(resized - side * scale) <= unit / 2
    # the projector turns the patch grid into exactly Gh*Gw tokens; the text carries as many
    projector = ModalityProjector(ProjectorConfig(vision_dim=2, text_dim=3, factors=(factor,)))
    if hp * wp <= 4096:
        out = projector(torch.zeros(1, hp * wp, 2), (hp, wp))
        assert out.shape[1] == grid.num_tokens
    assert image_placeholder(grid.token_grid, image_token="<i>").count("<i>") == grid.num_tokens


def test_vlm_seed_table(golden):
    """640x960 -> Hp=40, Wp=60; s=4 -> Gh=10, Gw=15, 150 projector tokens (s=2: 20x30)."""
    with torch.no_grad():
        out = DinoV3ViT(TINY).eval()(torch.zeros(1, 3, 640, 960))
    projector = ModalityProjector(ProjectorConfig(TINY.embed_dim, 8, factors=(4, 2), num_prefix_tokens=5))
    with torch.no_grad():
        tokens = {s: projector(out.last_hidden_state, out.patch_grid, factor=s).shape[1] for s in (4, 2)}
    processor = ImageProcessor(ImageProcessorConfig(max_img_size=960, pixel_shuffle_factor=4))
    pixels, grid = processor(np.zeros((640, 960, 3), dtype=np.uint8))
    capped = ImageProcessor(ImageProcessorConfig(max_img_size=768, pixel_shuffle_factor=4))
    capped_pixels, capped_grid = capped(np.zeros((640, 960, 3), dtype=np.uint8))
    table = {
        "patch_grid": list(out.patch_grid),
        "tokens_s4": tokens[4], "tokens_s2": tokens[2],
        "processor_960": {"shape": list(pixels.shape), "grid": list(grid)},
        "processor_768": {"shape": list(capped_pixels.shape), "grid": list(capped_grid)},
        "placeholders_s4": image_placeholder(grid).count("<|image|>"),
    }
    assert table["patch_grid"] == [40, 60] and tokens == {4: 150, 2: 600} and grid == (10, 15)
    golden("vlm_seed_table", table)


# --------------------------------------------------------------------------- processor on photos


PHOTOS = {  # name -> (loader, transpose?)
    "astronaut": (skimage_data.astronaut, False),  # 512x512 RGB
    "coffee": (skimage_data.coffee, False),  # 400x600 RGB, landscape
    "chelsea": (skimage_data.chelsea, False),  # 300x451 RGB
    "rocket_portrait": (skimage_data.rocket, True),  # 640x427 RGB, portrait
    "camera": (skimage_data.camera, False),  # 512x512 grey
    "page": (skimage_data.page, False),  # 191x384 grey, document
}


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_vlm_processor_on_photos(name):
    loader, transpose = PHOTOS[name]
    photo = loader()
    if transpose:
        photo = np.ascontiguousarray(photo.swapaxes(0, 1))
    h0, w0 = photo.shape[:2]
    config = ImageProcessorConfig(max_img_size=512, pixel_shuffle_factor=4)
    pixels, (gh, gw) = ImageProcessor(config)(photo)
    _, height, width = pixels.shape
    assert pixels.dtype == torch.float32 and pixels.shape[0] == 3
    assert height % 64 == 0 and width % 64 == 0 and max(height, width) <= 512
    assert (gh, gw) == (height // 64, width // 64)
    assert abs(math.log((height / width) / (h0 / w0))) < math.log(1 + 64 / min(height, width))  # aspect kept
    # ImageNet normalization: undoing it recovers the photo's mean brightness per channel
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    restored = pixels * std + mean
    assert restored.min() >= -1e-6 and restored.max() <= 1 + 1e-6
    original = torch.from_numpy(photo).float().div(255)
    original_mean = original.mean(dim=(0, 1)) if original.ndim == 3 else original.mean().expand(3)
    torch.testing.assert_close(restored.mean(dim=(1, 2)), original_mean, atol=0.02, rtol=0)
    if photo.ndim == 2:  # grey photos become three equal channels
        torch.testing.assert_close(restored[0], restored[1], atol=1e-6, rtol=0)
        torch.testing.assert_close(restored[1], restored[2], atol=1e-6, rtol=0)


def test_vlm_processor_pil_and_array_inputs_agree():
    photo = skimage_data.coffee()
    processor = ImageProcessor(ImageProcessorConfig(max_img_size=256, pixel_shuffle_factor=2))
    from_array, grid = processor(photo)
    from_pil, grid_pil = processor(PIL_Image.fromarray(photo))
    from_rgba, _ = processor(PIL_Image.fromarray(photo).convert("RGBA"))
    from_tensor, _ = processor(torch.from_numpy(photo).permute(2, 0, 1))
    assert grid == grid_pil == (5, 8)  # 400x600 -> 170.7x256 -> snapped to 32: 160x256 -> patches 10x16 -> 5x8
    assert torch.equal(from_array, from_pil) and torch.equal(from_array, from_rgba) and torch.equal(from_array, from_tensor)


@pytest.mark.parametrize("image, error, message", [
    (np.zeros((8, 40, 3), np.uint8), ValueError, r"image is too small: 8x40, expected both sides >= 16"),
    (np.zeros((0, 40, 3), np.uint8), ValueError, r"image is zero-sized: got 0x40"),
    (np.zeros((32, 32, 4), np.uint8), ValueError, r"must be \(H, W\), \(H, W, 1\) or \(H, W, 3\), got shape \(32, 32, 4\)"),
    (np.zeros((32, 32, 3), np.int32), TypeError, r"dtype must be uint8 or floating point"),
    ("photo.png", TypeError, r"must be a PIL image, a numpy array or a torch.Tensor, got str"),
])
def test_vlm_processor_errors(image, error, message):
    with pytest.raises(error, match=message):
        ImageProcessor()(image)


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "LA"])
def test_vlm_processor_rejects_unsupported_pil_modes(mode):
    image = PIL_Image.new(mode, (32, 32))
    with pytest.raises(ValueError, match=rf"unsupported PIL image mode '{mode}'; expected one of \('RGB', 'RGBA', 'L'\)"):
        ImageProcessor()(image)


def test_vlm_processor_config_rejects():
    with pytest.raises(ValueError, match=r"max_img_size=48 is smaller than one shuffle block patch_size\*factor = 64"):
        ImageProcessorConfig(max_img_size=48, pixel_shuffle_factor=4)
    with pytest.raises(ValueError, match="max_image_tokens must be None or an int >= 1"):
        ImageProcessorConfig(max_image_tokens=0)


def test_vlm_photo_end_to_end_token_count_matches_placeholders():
    """A rectangular photo through processor -> encoder -> projector: exactly Gh*Gw tokens, as in the text."""
    processor = ImageProcessor(ImageProcessorConfig(max_img_size=512, pixel_shuffle_factor=4))
    pixels, grid = processor(skimage_data.rocket())  # 427x640 -> 320x512 (snapped to 64)
    encoder = DinoV3ViT(TINY).eval()
    projector = ModalityProjector(ProjectorConfig(TINY.embed_dim, 8, factors=(4,), num_prefix_tokens=5)).eval()
    with torch.no_grad():
        out = encoder(pixels[None])
        tokens = projector(out.last_hidden_state, out.patch_grid)
    assert out.patch_grid == (20, 32) and grid == (5, 8)
    assert tokens.shape[1] == image_placeholder(grid).count("<|image|>") == 40


# --------------------------------------------------------------------------- token budget


@pytest.mark.property
@settings(max_examples=25, deadline=None)
@given(st.integers(16, 4000), st.integers(16, 4000), st.integers(1, 3000))
def test_vlm_token_budget_picks_smallest_fitting_factor(height, width, budget):
    config = ImageProcessorConfig(max_img_size=1024, max_image_tokens=budget, factors=(1, 2, 4, 8))
    plans = {s: plan_image(height, width, max_img_size=1024, patch_size=16, factor=s) for s in (1, 2, 4, 8)}
    if plans[8].num_tokens > budget:
        with pytest.raises(ValueError, match=rf"needs at least {plans[8].num_tokens} image tokens .*max_image_tokens={budget}"):
            plan_image_with_budget(height, width, config)
        return
    grid = plan_image_with_budget(height, width, config)
    assert grid.num_tokens <= budget
    assert all(plans[s].num_tokens > budget for s in (1, 2, 4, 8) if s < grid.factor)


def test_vlm_token_budget_factor_travels_to_projector():
    """The processor picks s per image; the projector, given that s, emits exactly Gh*Gw tokens."""
    config = ImageProcessorConfig(max_img_size=256, max_image_tokens=40, factors=(2, 4))
    processor = ImageProcessor(config)
    encoder = DinoV3ViT(TINY).eval()
    projector = ModalityProjector(ProjectorConfig(TINY.embed_dim, 8, factors=(2, 4), num_prefix_tokens=5)).eval()
    chosen = {}
    for name, shape in (("wide", (100, 400)), ("square", (300, 300))):
        processed = processor.process(np.full((*shape, 3), 128, np.uint8))
        with torch.no_grad():
            out = encoder(processed.pixel_values[None])
            tokens = projector(out.last_hidden_state, out.patch_grid, factor=processed.grid.factor)
        assert tokens.shape == (1, processed.grid.num_tokens, 8) and processed.grid.num_tokens <= 40
        chosen[name] = (processed.grid.factor, processed.grid.token_grid)
    # 100x400 -> 64x256: s=2 gives 2x8=16 tokens; 300x300 -> 256x256: s=2 would give 64 > 40, so s=4
    assert chosen == {"wide": (2, (2, 8)), "square": (4, (4, 4))}


# --------------------------------------------------------------------------- text side, collator


def test_vlm_placeholders_and_expansion():
    assert image_placeholder((10, 15)) == "<|image|>" * 150
    assert expand_image_tokens([1, 9, 2, 9, 3], [(1, 2), (2, 2)], image_token_id=9) == [1, 9, 9, 2, 9, 9, 9, 9, 3]
    with pytest.raises(ValueError, match="found 1 image markers but got 2 image grids"):
        expand_image_tokens([1, 9], [(1, 1), (1, 1)], image_token_id=9)
    with pytest.raises(ValueError, match=r"grid must be \(Gh, Gw\), two ints >= 1, got \(0, 3\)"):
        image_placeholder((0, 3))


def _sample(processor, shape, prompt, answer, image_token_id=9):
    processed = processor.process(np.full((*shape, 3), 200, np.uint8))
    ids = expand_image_tokens([1, image_token_id, *prompt, *answer], [processed.grid], image_token_id=image_token_id)
    labels = [-100] * (len(ids) - len(answer)) + list(answer)
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "images": [processed]}


@pytest.mark.parametrize("side", ["left", "right"])
def test_vlm_collator_pads_ids_labels_and_mask(side):
    processor = ImageProcessor(ImageProcessorConfig(max_img_size=128, pixel_shuffle_factor=2))
    samples = [_sample(processor, (64, 128), [5, 6], [7]), _sample(processor, (128, 128), [5], [7, 8])]
    batch = VLMCollator(pad_token_id=0, image_token_id=9, padding_side=side)(samples)
    lengths = [len(s["input_ids"]) for s in samples]  # 1+8+2+1 = 12 and 1+16+1+2 = 20
    assert lengths == [12, 20] and batch["input_ids"].shape == batch["labels"].shape == (2, 20)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    short = batch["attention_mask"][0].bool()
    assert short.tolist() == ([False] * 8 + [True] * 12 if side == "left" else [True] * 12 + [False] * 8)
    assert (batch["input_ids"][0][~short] == 0).all() and (batch["labels"][0][~short] == -100).all()
    assert torch.equal(batch["input_ids"][0][short], samples[0]["input_ids"])
    assert torch.equal(batch["labels"][0][short], samples[0]["labels"])
    assert [g.token_grid for g in batch["grids"]] == [(2, 4), (4, 4)]
    assert [tuple(p.shape) for p in batch["pixel_values"]] == [(3, 64, 128), (3, 128, 128)]


def test_vlm_collator_errors():
    processor = ImageProcessor(ImageProcessorConfig(max_img_size=128, pixel_shuffle_factor=2))
    sample = _sample(processor, (64, 128), [5], [7])
    collate = VLMCollator(pad_token_id=0, image_token_id=9)
    with pytest.raises(ValueError, match=r"sample 0: 7 image tokens in input_ids but its images need 8"):
        one_image_token_less = torch.cat([sample["input_ids"][:1], sample["input_ids"][2:]])
        collate([dict(sample, input_ids=one_image_token_less, labels=sample["labels"][1:])])
    with pytest.raises(ValueError, match="sample 0: input_ids and labels must be 1-D and equally long"):
        collate([dict(sample, labels=sample["labels"][:-1])])
    with pytest.raises(ValueError, match="sample 0: 11 tokens exceed max_length=10"):
        VLMCollator(pad_token_id=0, max_length=10)([sample])
    with pytest.raises(ValueError, match="empty list"):
        collate([])
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right'"):
        VLMCollator(pad_token_id=0, padding_side="center")
