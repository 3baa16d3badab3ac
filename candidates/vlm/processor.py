"""Image processor, image-token placeholders, collator and token budget for the DINOv3 VLM path.

Upstream: nanoVLM ``data/processors.py`` (``get_image_processor``, ``get_image_string``) and
``data/collators.py``; the plan is the "true high-resolution DINOv3" change it describes.

Geometry, for an image ``H0 x W0``, patch size ``p`` and pixel-shuffle factor ``s``:

1. scale so that the longest side is ``max_img_size`` (never up when ``allow_upscale=False``),
   keeping the aspect ratio;
2. snap each side to the nearest multiple of ``m = p*s`` (at least ``m``, at most the largest
   multiple of ``m`` not above ``max_img_size``), so ``H, W`` divide into whole shuffle blocks;
3. ``(Hp, Wp) = (H/p, W/p)`` patch tokens, ``(Gh, Gw) = (Hp/s, Wp/s)`` language-model tokens.

With a token budget (``max_image_tokens``) the smallest configured ``s`` whose ``Gh*Gw`` fits is
used; if none fits at ``max_img_size``, the largest ``s`` is kept and the long side is lowered in
steps of ``p*s`` until it fits (so a small image is never upscaled past the budget).

Inputs: PIL images in modes RGB, RGBA, L, LA, P, PA (converted to RGB; alpha is dropped, not
composited, as PIL's ``convert("RGB")`` does); ``(H, W[, C])`` arrays and ``(C, H, W)`` tensors
with ``C`` in 1 (grey), 2 (grey + alpha), 3 (RGB), 4 (RGBA), as ``uint8`` or as floats in
``[0, 1]`` (anything else, NaN included, is an error: no silent clamping).

Deliberate differences from nanoVLM: no image splitting (DINOv3 takes the whole image), resize
by ``torch`` bicubic interpolation with antialiasing (no torchvision/PIL resampling, so the
pixels do not depend on the PIL version), the collator pads labels with ``-100`` and masks image
placeholders out of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from candidates.vlm.projector import check_factors, check_grid, check_int_like
from harness.checks import check_choice, check_int, check_type

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "ImageGrid", "ImageProcessorConfig", "ImageProcessor",
    "ProcessedImage", "VLMCollator", "plan_image", "plan_image_with_budget", "image_placeholder",
    "expand_image_tokens", "IGNORE_INDEX", "SUPPORTED_PIL_MODES",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SUPPORTED_PIL_MODES = ("RGB", "RGBA", "L", "LA", "P", "PA")  # all converted to RGB
IGNORE_INDEX = -100  # labels the loss skips


@dataclass(frozen=True)
class ImageGrid:
    """Resized image size and the token grids it gives; ``factor`` travels to the projector."""

    height: int
    width: int
    patch_size: int
    factor: int

    @property
    def patch_grid(self) -> tuple[int, int]:
        """``(Hp, Wp)``: encoder tokens."""
        return self.height // self.patch_size, self.width // self.patch_size

    @property
    def token_grid(self) -> tuple[int, int]:
        """``(Gh, Gw)``: language-model tokens after the pixel shuffle."""
        hp, wp = self.patch_grid
        return hp // self.factor, wp // self.factor

    @property
    def num_tokens(self) -> int:
        gh, gw = self.token_grid
        return gh * gw


@dataclass(frozen=True)
class ImageProcessorConfig:
    """Attributes:
        max_img_size: cap on the longest side after resizing (pixels).
        patch_size: encoder patch size ``p``.
        pixel_shuffle_factor: projector factor ``s`` when no token budget is set; one of ``factors``.
        max_image_tokens: optional cap on ``Gh*Gw``; the factor is then chosen per image from
            ``factors`` (the smallest that fits, i.e. the most detail the budget allows), and
            the resolution is lowered when even the largest factor does not fit.
        factors: factors the projector has weights for (a tuple of distinct ints).
        min_image_size: both input sides must be at least this many pixels.
        allow_upscale: scale small images up to ``max_img_size`` (else only down).
    """

    max_img_size: int = 768
    patch_size: int = 16
    pixel_shuffle_factor: int = 4
    max_image_tokens: int | None = None
    factors: tuple[int, ...] = (2, 4)
    min_image_size: int = 16
    allow_upscale: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        for name in ("max_img_size", "patch_size", "pixel_shuffle_factor", "min_image_size"):
            check_int(f"ImageProcessorConfig.{name}", getattr(self, name), minimum=1)
        budget = self.max_image_tokens
        if budget is not None:
            check_int("ImageProcessorConfig.max_image_tokens", budget, minimum=1, fix="or None for no budget")
        factors = check_factors("ImageProcessorConfig.factors", self.factors)
        if self.pixel_shuffle_factor not in factors:
            raise ValueError(
                f"pixel_shuffle_factor={self.pixel_shuffle_factor} is not in factors={factors}; "
                f"the projector has weights only for the configured factors"
            )
        check_type("ImageProcessorConfig.allow_upscale", self.allow_upscale, bool)
        largest = max(factors) if budget is not None else self.pixel_shuffle_factor
        if self.max_img_size < self.patch_size * largest:
            raise ValueError(
                f"max_img_size={self.max_img_size} is smaller than one shuffle block "
                f"patch_size*factor = {self.patch_size * largest}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or any(v <= 0 for v in self.std):
            raise ValueError(f"mean and std must have 3 entries and std > 0, got mean={self.mean}, std={self.std}")


def plan_image(
    height: int, width: int, *, max_img_size: int, patch_size: int, factor: int, allow_upscale: bool = True
) -> ImageGrid:
    """Resized size and grids for an ``height x width`` image (pure geometry, see module docstring)."""
    height, width = check_int_like("height", height, minimum=0), check_int_like("width", width, minimum=0)
    if height < 1 or width < 1:
        raise ValueError(f"image is zero-sized: got {height}x{width}")
    max_img_size = check_int_like("max_img_size", max_img_size, minimum=1)
    patch_size = check_int_like("patch_size", patch_size, minimum=1)
    factor = check_int_like("factor", factor, minimum=1)
    unit = patch_size * factor
    cap = (max_img_size // unit) * unit
    if cap < unit:
        raise ValueError(f"max_img_size={max_img_size} is smaller than one shuffle block {unit}")
    scale = max_img_size / max(height, width)
    if not allow_upscale:
        scale = min(scale, 1.0)

    def snap(side: int) -> int:
        return min(cap, max(unit, math.floor(side * scale / unit + 0.5) * unit))

    return ImageGrid(snap(height), snap(width), patch_size, factor)


def plan_image_with_budget(height: int, width: int, config: ImageProcessorConfig) -> ImageGrid:
    """:func:`plan_image` with the factor (and if need be a lower resolution) so that ``Gh*Gw <= max_image_tokens``."""
    common = dict(patch_size=config.patch_size, allow_upscale=config.allow_upscale)
    if config.max_image_tokens is None:
        return plan_image(height, width, max_img_size=config.max_img_size, factor=config.pixel_shuffle_factor, **common)
    for factor in sorted(config.factors):  # the most detail first
        plan = plan_image(height, width, max_img_size=config.max_img_size, factor=factor, **common)
        if plan.num_tokens <= config.max_image_tokens:
            return plan
    # Even the largest factor needs too many tokens: keep it and lower the long side, one block at a time.
    factor = max(config.factors)
    unit = config.patch_size * factor
    for long_side in range((config.max_img_size // unit) * unit, unit - 1, -unit):
        plan = plan_image(height, width, max_img_size=long_side, factor=factor, **common)
        if plan.num_tokens <= config.max_image_tokens:
            break
    return plan  # at long_side == unit the plan is one token, so the loop always ends within budget


@dataclass(frozen=True)
class ProcessedImage:
    """Normalized ``(3, H, W)`` pixels and the grid they give."""

    pixel_values: torch.Tensor
    grid: ImageGrid


class ImageProcessor:
    """PIL image / ``(H, W[, C])`` array / ``(C, H, W)`` tensor -> ``(pixels, (Gh, Gw))``."""

    def __init__(self, config: ImageProcessorConfig | None = None) -> None:
        check_type("config", config, (ImageProcessorConfig, type(None)), what="an ImageProcessorConfig or None")
        self.config = config or ImageProcessorConfig()

    def __call__(self, image: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        processed = self.process(image)
        return processed.pixel_values, processed.grid.token_grid

    def process(self, image: Any) -> ProcessedImage:
        pixels = to_float_image(image)  # (3, H0, W0) in [0, 1]
        height, width = pixels.shape[-2:]
        if min(height, width) < self.config.min_image_size:
            raise ValueError(
                f"image is too small: {height}x{width}, expected both sides >= {self.config.min_image_size} pixels"
            )
        grid = plan_image_with_budget(height, width, self.config)
        resized = F.interpolate(
            pixels[None], size=(grid.height, grid.width), mode="bicubic", align_corners=False, antialias=True
        )[0].clamp(0.0, 1.0)  # (3, H, W); bicubic overshoots at edges, the input itself is in [0, 1]
        mean = torch.tensor(self.config.mean).view(3, 1, 1)
        std = torch.tensor(self.config.std).view(3, 1, 1)
        return ProcessedImage((resized - mean) / std, grid)


def to_float_image(image: Any) -> torch.Tensor:
    """``(3, H, W)`` float32 in ``[0, 1]`` from a PIL image, a numpy array or a tensor (alpha dropped)."""
    if _is_pil_image(image):
        image = _pil_to_rgb_array(image)
    if isinstance(image, np.ndarray):
        image = _array_to_tensor(image)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a PIL image, a numpy array or a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] not in (1, 2, 3, 4):
        raise ValueError(
            f"tensor images must be (C, H, W) with C = 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA), "
            f"got shape {tuple(image.shape)}"
        )
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image is zero-sized: got {image.shape[1]}x{image.shape[2]}")
    image = image[:1] if image.shape[0] <= 2 else image[:3]  # drop alpha, as PIL's convert("RGB") does
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    elif image.is_floating_point():
        image = image.float()
        _check_unit_range(image)
    else:
        raise TypeError(f"image dtype must be uint8 or floating point in [0, 1], got {image.dtype}")
    return image.expand(3, -1, -1).contiguous()  # grey -> RGB


def _check_unit_range(image: torch.Tensor) -> None:
    if not torch.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    low, high = image.aminmax()
    if low < 0 or high > 1:
        raise ValueError(
            f"float images must be in [0, 1], got values in [{float(low):.4g}, {float(high):.4g}]; "
            f"divide 0..255 images by 255 (or pass uint8), and pass pixels before normalization"
        )


def _array_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W)`` or ``(H, W, C)`` array -> ``(C, H, W)`` tensor (a copy)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"array images must be (H, W) or (H, W, C) with C = 1, 2 (grey+alpha), 3 or 4 (RGBA), "
            f"got shape {tuple(image.shape)}"
        )
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"image dtype must be uint8 or floating point in [0, 1], got {image.dtype}")
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)  # (C, H, W), writable copy


def _pil_to_rgb_array(image: Any) -> np.ndarray:
    if image.mode not in SUPPORTED_PIL_MODES:
        raise ValueError(
            f"unsupported PIL image mode {image.mode!r}; expected one of {SUPPORTED_PIL_MODES} "
            f"(convert it yourself, e.g. image.convert('RGB'), if that conversion is meaningful)"
        )
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image is zero-sized: got {image.height}x{image.width}")
    return np.asarray(image.convert("RGB"))  # palette -> colours, grey -> 3 channels, alpha dropped


def _is_pil_image(image: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # Pillow is optional: arrays and tensors work without it
        return False
    return isinstance(image, Image.Image)


# --------------------------------------------------------------------------- text side


def image_placeholder(grid: tuple[int, int] | ImageGrid, *, image_token: str = "<|image|>") -> str:
    """Exactly ``Gh*Gw`` image tokens for one image with token grid ``(Gh, Gw)``."""
    gh, gw = _token_grid(grid)
    return image_token * (gh * gw)


def expand_image_tokens(
    input_ids: Sequence[int], grids: Sequence[tuple[int, int] | ImageGrid], *, image_token_id: int
) -> list[int]:
    """Replace the i-th single ``image_token_id`` by ``Gh_i*Gw_i`` copies (one marker per image)."""
    positions = [i for i, t in enumerate(input_ids) if t == image_token_id]
    if len(positions) != len(grids):
        raise ValueError(f"found {len(positions)} image markers but got {len(grids)} image grids")
    out: list[int] = []
    start = 0
    for position, grid in zip(positions, grids):
        gh, gw = _token_grid(grid)
        out.extend(input_ids[start:position])
        out.extend([image_token_id] * (gh * gw))
        start = position + 1
    out.extend(input_ids[start:])
    return out


def _token_grid(grid: Any) -> tuple[int, int]:
    """``(Gh, Gw)`` from an :class:`ImageGrid` or two int-likes (Python, numpy or 0-d tensor ints)."""
    if isinstance(grid, ImageGrid):
        return grid.token_grid
    return check_grid("grid", grid, expected="(Gh, Gw), two ints >= 1, or an ImageGrid")


@dataclass(frozen=True)
class VLMCollator:
    """Pads a list of samples into a batch.

    A sample is a mapping with ``input_ids`` (1-D integer ids), optional ``labels`` (same length;
    default: a copy of ``input_ids``) and optional ``images`` (a list of :class:`ProcessedImage`).
    The batch has ``input_ids`` padded with ``pad_token_id``, ``labels`` padded with ``-100``,
    ``attention_mask`` (1 on real tokens), and the images and grids as lists (their sizes vary).

    Image placeholders are inputs, never targets: labels at ``image_token_id`` positions are
    always ``-100``. A sample with images therefore needs ``image_token_id``, and its number of
    image tokens must equal its images' ``sum(Gh*Gw)``.
    """

    pad_token_id: int
    image_token_id: int | None = None
    padding_side: Literal["left", "right"] = "left"
    max_length: int | None = None

    def __post_init__(self) -> None:
        check_int("VLMCollator.pad_token_id", self.pad_token_id, minimum=0,
                  fix="pass the tokenizer's pad_token_id (tokenizers without one often reuse eos_token_id)")
        if self.image_token_id is not None:
            check_int("VLMCollator.image_token_id", self.image_token_id, minimum=0, fix="or None for text only")
        if self.pad_token_id == self.image_token_id:
            raise ValueError(f"pad_token_id and image_token_id must differ, both are {self.pad_token_id}")
        check_choice("VLMCollator.padding_side", self.padding_side, ("left", "right"))
        if self.max_length is not None:
            check_int("VLMCollator.max_length", self.max_length, minimum=1, fix="or None for no limit")

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if isinstance(samples, Mapping) or not isinstance(samples, Sequence):
            raise TypeError(f"samples must be a list of mappings (one per sample), got {type(samples).__name__}")
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        ids, labels, images = zip(*(self._sample(index, sample) for index, sample in enumerate(samples)))
        length = max(len(i) for i in ids)
        return {
            "input_ids": torch.stack([self._pad(i, length, self.pad_token_id) for i in ids]),
            "labels": torch.stack([self._pad(lab, length, IGNORE_INDEX) for lab in labels]),
            "attention_mask": torch.stack([self._pad(torch.ones_like(i), length, 0) for i in ids]),
            "pixel_values": [img.pixel_values for imgs in images for img in imgs],
            "grids": [img.grid for imgs in images for img in imgs],
        }

    def _sample(self, index: int, sample: Any) -> tuple[torch.Tensor, torch.Tensor, list[ProcessedImage]]:
        """One sample's checked ``input_ids``, ``labels`` (image positions masked) and images."""
        if not isinstance(sample, Mapping):
            raise TypeError(
                f"sample {index} must be a mapping with 'input_ids' (and optional 'labels', 'images'), "
                f"got {type(sample).__name__}"
            )
        if "input_ids" not in sample:
            raise ValueError(
                f"sample {index} has no 'input_ids'; expected keys 'input_ids' and optionally 'labels', 'images', "
                f"got {sorted(map(str, sample))}"
            )
        ids = _token_ids(index, "input_ids", sample["input_ids"])
        labels = _token_ids(index, "labels", sample["labels"]) if "labels" in sample else ids.clone()
        images = _images(index, sample.get("images", ()))
        if labels.shape != ids.shape:
            raise ValueError(
                f"sample {index}: input_ids and labels must be 1-D and equally long, "
                f"got {tuple(ids.shape)} and {tuple(labels.shape)}"
            )
        if self.max_length is not None and len(ids) > self.max_length:
            raise ValueError(f"sample {index}: {len(ids)} tokens exceed max_length={self.max_length}")
        if self.image_token_id is None:
            if images:
                raise ValueError(
                    f"sample {index} has {len(images)} image(s) but image_token_id is None; set "
                    f"VLMCollator(image_token_id=...) so that image tokens are counted and masked out of the labels"
                )
            return ids, labels, images
        is_image = ids == self.image_token_id
        expected = sum(img.grid.num_tokens for img in images)
        if int(is_image.sum()) != expected:
            raise ValueError(
                f"sample {index}: {int(is_image.sum())} image tokens in input_ids but its images need {expected} "
                f"(sum of Gh*Gw)"
            )
        return ids, labels.masked_fill(is_image, IGNORE_INDEX), images

    def _pad(self, x: torch.Tensor, length: int, value: int) -> torch.Tensor:
        pad = (length - len(x), 0) if self.padding_side == "left" else (0, length - len(x))
        return F.pad(x, pad, value=value)


def _token_ids(index: int, key: str, value: Any) -> torch.Tensor:
    """A sample's ``input_ids`` or ``labels`` as a 1-D int64 tensor; floats and bools are refused, not cast."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"sample {index}: {key} must be a 1-D sequence of int token ids, got {type(value).__name__}")
    try:
        ids = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"sample {index}: {key} must be a 1-D sequence of int token ids, got {type(value).__name__}"
        ) from None
    if ids.ndim != 1:
        raise ValueError(
            f"sample {index}: input_ids and labels must be 1-D and equally long, got {key} of shape {tuple(ids.shape)}"
        )
    if ids.numel() == 0:
        raise ValueError(f"sample {index}: {key} is empty")
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"sample {index}: {key} must hold integer token ids, got dtype {ids.dtype}")
    return ids.long()


def _images(index: int, images: Any) -> list[ProcessedImage]:
    if isinstance(images, ProcessedImage):
        raise TypeError(
            f"sample {index}: images must be a list of ProcessedImage, got one ProcessedImage; wrap it in a list"
        )
    if isinstance(images, (str, bytes, Mapping)) or not isinstance(images, Sequence):
        raise TypeError(
            f"sample {index}: images must be a list of ProcessedImage (from ImageProcessor.process), "
            f"got {type(images).__name__}; leave the key out for a text-only sample"
        )
    for position, image in enumerate(images):
        if not isinstance(image, ProcessedImage):
            raise TypeError(
                f"sample {index}, image {position}: expected a ProcessedImage (from ImageProcessor.process), "
                f"got {type(image).__name__}"
            )
    return list(images)
