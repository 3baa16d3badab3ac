"""Image processor, grid math, token budget, placeholders, collator; the published token table as a golden."""

import math
from dataclasses import replace

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
from reference.vlm import TINY



@pytest.fixture(scope="module")
def skimage_data():
    """Real photos; only the photo tests need scikit-image (a declared test dependency)."""
    return pytest.importorskip("skimage.data", reason="real-photo tests need scikit-image's sample images")


@pytest.fixture(scope="module")
def PIL_Image():  # noqa: N802 - the module's own name
    return pytest.importorskip("PIL.Image", reason="PIL inputs need Pillow")


# --------------------------------------------------------------------------- grid math


@pytest.mark.property
@settings(deadline=None)
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


def test_vlm_grid_table_at_640x960(golden):
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
    golden("vlm_grid_table", table)


# --------------------------------------------------------------------------- processor on photos


PHOTOS = {  # test id -> (skimage.data loader, transpose?)
    "astronaut": ("astronaut", False),  # 512x512 RGB
    "coffee": ("coffee", False),  # 400x600 RGB, landscape
    "chelsea": ("chelsea", False),  # 300x451 RGB
    "rocket_portrait": ("rocket", True),  # 640x427 RGB, portrait
    "camera": ("camera", False),  # 512x512 grey
    "page": ("page", False),  # 191x384 grey, document
}


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_vlm_processor_on_photos(name, skimage_data):
    loader, transpose = PHOTOS[name]
    photo = getattr(skimage_data, loader)()
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


def test_vlm_processor_pil_and_array_inputs_agree(skimage_data, PIL_Image):
    photo = skimage_data.coffee()
    processor = ImageProcessor(ImageProcessorConfig(max_img_size=256, pixel_shuffle_factor=2))
    from_array, grid = processor(photo)
    from_pil, grid_pil = processor(PIL_Image.fromarray(photo))
    from_tensor, _ = processor(torch.from_numpy(photo).permute(2, 0, 1))
    from_float, _ = processor(torch.from_numpy(photo).permute(2, 0, 1).double() / 255)
    assert grid == grid_pil == (5, 8)  # 400x600 -> 170.7x256 -> snapped to 32: 160x256 -> patches 10x16 -> 5x8
    assert torch.equal(from_array, from_pil) and torch.equal(from_array, from_tensor)
    torch.testing.assert_close(from_float, from_array, atol=1e-5, rtol=0)
    # alpha is dropped (not composited) the same way for PIL RGBA, (H, W, 4) arrays and (4, H, W) tensors
    alpha = np.random.default_rng(0).integers(0, 256, photo.shape[:2], dtype=np.uint8)
    rgba = np.dstack([photo, alpha])
    for image in (PIL_Image.fromarray(rgba, "RGBA"), rgba, torch.from_numpy(rgba).permute(2, 0, 1)):
        assert torch.equal(processor(image)[0], from_array)


@pytest.mark.parametrize("image, error, message", [
    (np.zeros((8, 40, 3), np.uint8), ValueError, r"image is too small: 8x40, expected both sides >= 16"),
    (np.zeros((0, 40, 3), np.uint8), ValueError, r"image is zero-sized: got 0x40"),
    (np.zeros((32, 32, 5), np.uint8), ValueError, r"\(H, W, C\) with C = 1, 2 \(grey\+alpha\), 3 or 4 \(RGBA\), got shape \(32, 32, 5\)"),
    (torch.zeros(5, 32, 32), ValueError, r"\(C, H, W\) with C = 1 \(grey\), 2 .* got shape \(5, 32, 32\)"),
    (np.zeros((32, 32, 3), np.int32), TypeError, r"dtype must be uint8 or floating point in \[0, 1\], got int32"),
    (torch.zeros(3, 32, 32, dtype=torch.int64), TypeError, r"dtype must be uint8 or floating point in \[0, 1\], got torch.int64"),
    ("photo.png", TypeError, r"must be a PIL image, a numpy array or a torch.Tensor, got str"),
    # floats are [0, 1] pixels: a 0..255 float image or a normalized one is refused, not clamped
    (torch.full((3, 32, 32), 200.0), ValueError, r"float images must be in \[0, 1\], got values in \[200, 200\]; divide 0..255"),
    (np.full((32, 32, 3), 128.0), ValueError, r"float images must be in \[0, 1\], got values in \[128, 128\]"),
    (torch.full((3, 32, 32), -0.5), ValueError, r"float images must be in \[0, 1\], got values in \[-0.5, -0.5\]"),
    (torch.full((3, 32, 32), float("nan")), ValueError, r"image contains NaN or infinite values"),
    (torch.zeros(3, 32, 32).index_fill(1, torch.tensor([3]), float("inf")), ValueError, r"image contains NaN or infinite"),
], ids=[
    "too_small", "zero_sized", "array_5_channels", "tensor_5_channels", "array_int32", "tensor_int64", "path",
    "tensor_0_255_float", "array_0_255_float", "normalized_float", "nan", "inf",
])
def test_vlm_processor_errors(image, error, message):
    with pytest.raises(error, match=message):
        ImageProcessor()(image)


def test_vlm_processor_grey_alpha_and_palette_inputs(PIL_Image):
    processor = ImageProcessor(ImageProcessorConfig(max_img_size=96, pixel_shuffle_factor=2))
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (64, 96), dtype=np.uint8)
    alpha = rng.integers(0, 256, (64, 96), dtype=np.uint8)
    expected, grid = processor(grey)
    assert grid == (2, 3)
    # grey + alpha: PIL LA, (H, W, 2) array and (2, H, W) tensor all give the grey image's pixels
    la = np.dstack([grey, alpha])
    for image in (PIL_Image.fromarray(la, "LA"), la, torch.from_numpy(la).permute(2, 0, 1)):
        assert torch.equal(processor(image)[0], expected)
    # palette images become their colours: a two-colour palette, left half colour 0, right half colour 1
    colours = np.array([[10, 20, 30], [200, 100, 50]], np.uint8)
    index = np.zeros((64, 96), np.uint8)
    index[:, 48:] = 1
    palette = PIL_Image.fromarray(index, "P")
    palette.putpalette(colours.ravel().tolist())
    assert torch.equal(processor(palette)[0], processor(colours[index])[0])
    with_alpha = palette.convert("PA")
    assert with_alpha.mode == "PA" and torch.equal(processor(with_alpha)[0], processor(colours[index])[0])


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "F", "YCbCr"])
def test_vlm_processor_rejects_unsupported_pil_modes(mode, PIL_Image):
    image = PIL_Image.new(mode, (32, 32))
    with pytest.raises(ValueError, match=(
        rf"unsupported PIL image mode '{mode}'; expected one of \('RGB', 'RGBA', 'L', 'LA', 'P', 'PA'\) "
        rf"\(convert it yourself, e\.g\. image\.convert\('RGB'\)"
    )):
        ImageProcessor()(image)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_img_size": 48, "pixel_shuffle_factor": 4}, r"max_img_size=48 is smaller than one shuffle block patch_size\*factor = 64"),
    ({"max_image_tokens": 0}, r"max_image_tokens must be an int >= 1, got 0; or None for no budget"),
    ({"factors": (2, 2)}, r"factors must be a non-empty tuple of distinct ints >= 1, got \(2, 2\)"),
    ({"factors": ()}, r"factors must be a non-empty tuple"),
    ({"pixel_shuffle_factor": 3}, r"pixel_shuffle_factor=3 is not in factors=\(2, 4\); the projector has weights only"),
])
def test_vlm_processor_config_rejects_a_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageProcessorConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"factors": [2, 4]}, r"factors must be a non-empty tuple of distinct ints >= 1, got list \[2, 4\]"),
    ({"factors": (True,), "pixel_shuffle_factor": 1}, r"factors must be a non-empty tuple of distinct ints >= 1, got bool True"),
    ({"patch_size": 16.0}, r"ImageProcessorConfig.patch_size must be an int >= 1, got float 16.0"),
    ({"allow_upscale": "no"}, r"allow_upscale must be a bool, got str 'no'"),
])
def test_vlm_processor_config_rejects_a_wrong_type(kwargs, message):
    with pytest.raises(TypeError, match=message):
        ImageProcessorConfig(**kwargs)


def test_vlm_processor_rejects_a_config_of_another_type():
    kwargs = {"max_img_size": 512}
    with pytest.raises(TypeError, match="config must be an ImageProcessorConfig or None, got dict"):
        ImageProcessor(kwargs)


@pytest.mark.parametrize("args, kwargs, error, message", [
    ((64, 64), {"patch_size": 0}, ValueError, "patch_size must be an int >= 1, got 0"),
    ((64, 64), {"factor": 0}, ValueError, "factor must be an int >= 1, got 0"),
    ((64.0, 64), {}, TypeError, r"^height must be an int >= 0, got float 64.0$"),
    ((64, 64), {"patch_size": 16.0}, TypeError, r"^patch_size must be an int >= 1, got float 16.0$"),
    ((64, 64), {"max_img_size": 767.5}, TypeError, r"^max_img_size must be an int >= 1, got float 767.5$"),
    ((64, 64), {"factor": True}, TypeError, r"^factor must be an int >= 1, got bool True$"),
    ((64, 0), {}, ValueError, "image is zero-sized: got 64x0"),
    ((64, 64), {"max_img_size": 32}, ValueError, "max_img_size=32 is smaller than one shuffle block 64"),
])
def test_vlm_plan_image_rejects(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        plan_image(*args, **{"max_img_size": 768, "patch_size": 16, "factor": 4, **kwargs})


def test_vlm_plan_image_accepts_int_likes():
    expected = plan_image(300, 400, max_img_size=512, patch_size=16, factor=2)
    numpy_ints = plan_image(np.int64(300), np.int32(400), max_img_size=np.int64(512), patch_size=16, factor=np.int8(2))
    assert numpy_ints == expected and type(numpy_ints.height) is int


def test_vlm_photo_end_to_end_token_count_matches_placeholders(skimage_data):
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
@settings(deadline=None)
@given(st.integers(16, 4000), st.integers(16, 4000), st.integers(1, 3000), st.booleans())
def test_vlm_token_budget_picks_smallest_fitting_factor(height, width, budget, upscale):
    factors = (1, 2, 4, 8)
    config = ImageProcessorConfig(max_img_size=1024, max_image_tokens=budget, factors=factors, allow_upscale=upscale)
    plans = {s: plan_image(height, width, max_img_size=1024, patch_size=16, factor=s, allow_upscale=upscale) for s in factors}
    grid = plan_image_with_budget(height, width, config)
    assert grid.num_tokens <= budget
    fitting = [s for s in factors if plans[s].num_tokens <= budget]
    if fitting:  # at max_img_size: the most detail the budget allows
        assert grid == plans[min(fitting)]
        return
    # nothing fits at max_img_size: the largest factor at the largest long side that fits
    long_side = max(grid.height, grid.width)
    assert grid.factor == 8 and long_side < max(plans[8].height, plans[8].width)
    one_block_more = plan_image(height, width, max_img_size=long_side + 128, patch_size=16, factor=8, allow_upscale=upscale)
    assert one_block_more.num_tokens > budget


def test_vlm_token_budget_caps_upscaling():
    """A 64x64 image is not upscaled to 768 (144 tokens at s=4) past a 64-token budget: 512x512, 8x8."""
    config = ImageProcessorConfig(max_img_size=768, max_image_tokens=64, factors=(2, 4))
    processed = ImageProcessor(config).process(np.full((64, 64, 3), 90, np.uint8))
    assert processed.pixel_values.shape == (3, 512, 512)
    assert (processed.grid.factor, processed.grid.token_grid) == (4, (8, 8))
    # without upscaling the image keeps its size and the finer factor fits
    small = ImageProcessor(replace(config, allow_upscale=False)).process(np.full((64, 64, 3), 90, np.uint8))
    assert small.pixel_values.shape == (3, 64, 64) and small.grid.token_grid == (2, 2)


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
    with pytest.raises(ValueError, match=r"^grid must be \(Gh, Gw\), two ints >= 1, or an ImageGrid, got \(0, 3\)$"):
        image_placeholder((0, 3))


def test_vlm_placeholders_accept_int_likes_and_name_bad_grids():
    expected = image_placeholder((2, 3), image_token="<i>")
    assert image_placeholder((np.int64(2), np.int32(3)), image_token="<i>") == expected
    assert image_placeholder(np.array([2, 3]), image_token="<i>") == expected
    assert image_placeholder(torch.tensor([2, 3]), image_token="<i>") == expected
    assert expand_image_tokens([9], [np.array([1, 2])], image_token_id=9) == [9, 9]
    with pytest.raises(TypeError, match=r"^grid must be \(Gh, Gw\), two ints >= 1, or an ImageGrid, got int 6$"):
        image_placeholder(6)
    with pytest.raises(TypeError, match=r"got tuple \(2.0, 3\)$"):
        image_placeholder((2.0, 3))
    with pytest.raises(TypeError, match=r"got tuple \(1, 2, 3\)$"):
        image_placeholder((1, 2, 3))
    with pytest.raises(TypeError, match=r"got str 'ab'$"):
        image_placeholder("ab")


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
        VLMCollator(pad_token_id=0, image_token_id=9, max_length=10)([sample])
    with pytest.raises(ValueError, match="empty list"):
        collate([])
    with pytest.raises(ValueError, match=r"^VLMCollator.padding_side must be one of 'left', 'right', got 'center'$"):
        VLMCollator(pad_token_id=0, padding_side="center")


def test_vlm_collator_default_labels_mask_image_tokens_and_padding():
    """Without labels the targets are the text: image placeholders and padding are -100."""
    processor = ImageProcessor(ImageProcessorConfig(max_img_size=128, pixel_shuffle_factor=2))
    short, long = (_sample(processor, shape, [5, 6], [7]) for shape in ((64, 128), (128, 128)))
    samples = [{k: v for k, v in sample.items() if k != "labels"} for sample in (short, long)]
    batch = VLMCollator(pad_token_id=0, image_token_id=9, padding_side="right")(samples)
    assert batch["labels"][0].tolist() == [1] + [-100] * 8 + [5, 6, 7] + [-100] * 8  # 12 tokens, 8 pads
    assert batch["labels"][1].tolist() == [1] + [-100] * 16 + [5, 6, 7]
    assert batch["input_ids"][0].tolist() == [1] + [9] * 8 + [5, 6, 7] + [0] * 8
    # given labels keep their values, except that image positions are never targets
    leaky = dict(short, labels=short["input_ids"].clone())
    assert torch.equal(VLMCollator(pad_token_id=0, image_token_id=9)([leaky])["labels"][0],
                       VLMCollator(pad_token_id=0, image_token_id=9)([samples[0]])["labels"][0])
    # a text-only sample needs no image_token_id; its labels are its ids
    text = VLMCollator(pad_token_id=0)([{"input_ids": [4, 5, 6]}])
    assert text["labels"].tolist() == [[4, 5, 6]] and text["pixel_values"] == []


@pytest.mark.parametrize("kwargs, error, message", [
    ({"pad_token_id": None}, TypeError,
     r"^VLMCollator.pad_token_id must be an int >= 0, got NoneType None; pass the tokenizer's pad_token_id "
     r"\(tokenizers without one often reuse eos_token_id\)$"),
    ({"pad_token_id": 0.0}, TypeError, r"^VLMCollator.pad_token_id must be an int >= 0, got float 0.0; "),
    ({"pad_token_id": -1}, ValueError, r"^VLMCollator.pad_token_id must be an int >= 0, got -1; "),
    ({"pad_token_id": 0, "image_token_id": -2}, ValueError,
     r"^VLMCollator.image_token_id must be an int >= 0, got -2; or None for text only$"),
    ({"pad_token_id": 9, "image_token_id": 9}, ValueError, "pad_token_id and image_token_id must differ, both are 9"),
    ({"pad_token_id": 0, "image_token_id": "<image>"}, TypeError,
     r"^VLMCollator.image_token_id must be an int >= 0, got str '<image>'; or None for text only$"),
    ({"pad_token_id": 0, "max_length": 0}, ValueError,
     r"^VLMCollator.max_length must be an int >= 1, got 0; or None for no limit$"),
    ({"pad_token_id": 0, "max_length": "10"}, TypeError, r"^VLMCollator.max_length must be an int >= 1, got str '10'"),
])
def test_vlm_collator_config_rejects(kwargs, error, message):
    with pytest.raises(error, match=message):
        VLMCollator(**kwargs)


BAD_SAMPLES = {  # case -> (samples made from one good sample, error, message)
    "float_ids": (
        lambda good: [dict(good, input_ids=good["input_ids"].double())],
        TypeError, r"sample 0: input_ids must hold integer token ids, got dtype torch.float64"),
    "float_list_ids": (
        lambda good: [{"input_ids": [1.0, 2.5]}],
        TypeError, r"sample 0: input_ids must hold integer token ids, got dtype torch.float32"),
    "float_labels": (
        lambda good: [dict(good, labels=good["labels"].float())],
        TypeError, r"sample 0: labels must hold integer token ids"),
    "bool_ids": (
        lambda good: [{"input_ids": [True, False]}],
        TypeError, r"input_ids must hold integer token ids, got dtype torch.bool"),
    "string_ids": (
        lambda good: [{"input_ids": "hello"}],
        TypeError, r"sample 0: input_ids must be a 1-D sequence of int token ids, got str"),
    "empty_ids": (
        lambda good: [{"input_ids": []}],
        ValueError, r"sample 0: input_ids is empty"),
    "2d_ids": (
        lambda good: [{"input_ids": [[1, 2]]}],
        ValueError, r"sample 0: input_ids and labels must be 1-D and equally long, got input_ids of shape \(1, 2\)"),
    "missing_ids": (
        lambda good: [{"labels": [1, 2]}],
        ValueError, r"sample 0 has no 'input_ids'; expected keys 'input_ids' and optionally 'labels', 'images', "
                    r"got \['labels'\]"),
    "not_a_mapping": (
        lambda good: [[1, 2, 3]],
        TypeError, r"sample 0 must be a mapping with 'input_ids' .*got list"),
    "one_sample_not_a_list": (
        lambda good: good,
        TypeError, r"samples must be a list of mappings \(one per sample\), got dict"),
    "images_none": (
        lambda good: [dict(good, images=None)],
        TypeError, r"sample 0: images must be a list of ProcessedImage \(from ImageProcessor.process\), got NoneType"),
    "image_not_in_list": (
        lambda good: [dict(good, images=good["images"][0])],
        TypeError, r"got one ProcessedImage; wrap it in a list"),
    "tensor_in_images": (
        lambda good: [dict(good, images=[good["images"][0].pixel_values])],
        TypeError, r"sample 0, image 0: expected a ProcessedImage \(from ImageProcessor.process\), got Tensor"),
    "tensor_as_images": (
        lambda good: [dict(good, images=good["images"][0].pixel_values)],
        TypeError, r"sample 0: images must be a list of ProcessedImage .*got Tensor"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAMPLES))
def test_vlm_collator_rejects_bad_samples(case):
    make_samples, error, message = BAD_SAMPLES[case]
    good = _sample(ImageProcessor(ImageProcessorConfig(max_img_size=128, pixel_shuffle_factor=2)), (64, 128), [5], [7])
    assert VLMCollator(pad_token_id=0, image_token_id=9)([good])["input_ids"].shape == (1, 11)
    with pytest.raises(error, match=message):
        VLMCollator(pad_token_id=0, image_token_id=9)(make_samples(good))


def test_vlm_collator_needs_image_token_id_for_images():
    sample = _sample(ImageProcessor(ImageProcessorConfig(max_img_size=128, pixel_shuffle_factor=2)), (64, 128), [5], [7])
    with pytest.raises(ValueError, match=r"sample 0 has 1 image\(s\) but image_token_id is None; set VLMCollator\(image_token_id=...\)"):
        VLMCollator(pad_token_id=0)([sample])
