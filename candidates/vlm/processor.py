"""Image processor, image-token placeholders, collator and token budget for the DINOv3 VLM path.

Upstream: nanoVLM ``data/processors.py`` (``get_image_processor``, ``get_image_string``) and
``data/collators.py``; the plan is the "true high-resolution DINOv3" change it describes.

Geometry, for an image ``H0 x W0``, patch size ``p`` and pixel-shuffle factor ``s``:

1. scale so that the longest side is ``max_img_size`` (never up when ``allow_upscale=False``),
   keeping the aspect ratio;
2. snap each side to the nearest multiple of ``m = p*s`` (at least ``m``, at most the largest
   multiple of ``m`` not above ``max_img_size``), so ``H, W`` divide into whole shuffle blocks;
3. ``(Hp, Wp) = (H/p, W/p)`` patch tokens, ``(Gh, Gw) = (Hp/s, Wp/s)`` language-model tokens.

Deliberate differences from nanoVLM: no image splitting (DINOv3 takes the whole image), resize
by ``torch`` bicubic interpolation with antialiasing (no torchvision/PIL resampling, so the
pixels do not depend on the PIL version), collator pads labels with ``-100`` everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "ImageGrid", "ImageProcessorConfig", "ImageProcessor",
    "ProcessedImage", "VLMCollator", "plan_image", "plan_image_with_budget", "image_placeholder",
    "expand_image_tokens", "IGNORE_INDEX",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SUPPORTED_PIL_MODES = ("RGB", "RGBA", "L")
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
        pixel_shuffle_factor: projector factor ``s`` when no token budget is set.
        max_image_tokens: optional cap on ``Gh*Gw``; the factor is then chosen per image from
            ``factors`` (the smallest that fits, i.e. the most detail the budget allows).
        factors: factors the budget may choose from (those the projector has weights for).
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
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ImageProcessorConfig.{name} must be an int >= 1, got {value!r}")
        budget = self.max_image_tokens
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
            raise ValueError(f"max_image_tokens must be None or an int >= 1, got {self.max_image_tokens!r}")
        if not self.factors or any(not isinstance(s, int) or s < 1 for s in self.factors):
            raise ValueError(f"factors must be a non-empty tuple of ints >= 1, got {self.factors!r}")
        largest = max(self.factors) if self.max_image_tokens is not None else self.pixel_shuffle_factor
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
    if height < 1 or width < 1:
        raise ValueError(f"image is zero-sized: got {height}x{width}")
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
    """:func:`plan_image` with the factor chosen so that ``Gh*Gw <= max_image_tokens``."""
    common = dict(max_img_size=config.max_img_size, patch_size=config.patch_size, allow_upscale=config.allow_upscale)
    if config.max_image_tokens is None:
        return plan_image(height, width, factor=config.pixel_shuffle_factor, **common)
    plans = [plan_image(height, width, factor=s, **common) for s in sorted(config.factors)]
    for plan in plans:
        if plan.num_tokens <= config.max_image_tokens:
            return plan
    fewest = min(plans, key=lambda p: p.num_tokens)
    raise ValueError(
        f"a {height}x{width} image needs at least {fewest.num_tokens} image tokens (factor {fewest.factor}) "
        f"but max_image_tokens={config.max_image_tokens}; lower max_img_size or allow a larger factor"
    )


@dataclass(frozen=True)
class ProcessedImage:
    """Normalized ``(3, H, W)`` pixels and the grid they give."""

    pixel_values: torch.Tensor
    grid: ImageGrid


class ImageProcessor:
    """PIL image / ``(H, W[, C])`` array / ``(C, H, W)`` tensor -> ``(pixels, (Gh, Gw))``."""

    def __init__(self, config: ImageProcessorConfig | None = None) -> None:
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
        )[0].clamp(0.0, 1.0)  # (3, H, W)
        mean = torch.tensor(self.config.mean).view(3, 1, 1)
        std = torch.tensor(self.config.std).view(3, 1, 1)
        return ProcessedImage((resized - mean) / std, grid)


def to_float_image(image: Any) -> torch.Tensor:
    """``(3, H, W)`` float32 in ``[0, 1]`` from a PIL image, a numpy array or a tensor."""
    if _is_pil_image(image):
        if image.mode not in SUPPORTED_PIL_MODES:
            raise ValueError(f"unsupported PIL image mode {image.mode!r}; expected one of {SUPPORTED_PIL_MODES}")
        if image.width == 0 or image.height == 0:
            raise ValueError(f"image is zero-sized: got {image.height}x{image.width}")
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.array(image))  # a writable copy
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[-1] not in (1, 3):
            raise ValueError(f"array images must be (H, W), (H, W, 1) or (H, W, 3), got shape {tuple(image.shape)}")
        image = image.permute(2, 0, 1)  # (C, H, W)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a PIL image, a numpy array or a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"tensor images must be (1 or 3, H, W), got shape {tuple(image.shape)}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image is zero-sized: got {image.shape[1]}x{image.shape[2]}")
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    elif image.is_floating_point():
        image = image.float()
    else:
        raise TypeError(f"image dtype must be uint8 or floating point in [0, 1], got {image.dtype}")
    return image.expand(3, -1, -1).contiguous()  # grey -> RGB


def _is_pil_image(image: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # Pillow is optional: arrays and tensors work without it
        return False
    return isinstance(image, Image.Image)


# --------------------------------------------------------------------------- text side


def image_placeholder(grid: tuple[int, int], *, image_token: str = "<|image|>") -> str:
    """Exactly ``Gh*Gw`` image tokens for one image with token grid ``(Gh, Gw)``."""
    gh, gw = _token_grid(grid)
    return image_token * (gh * gw)


def expand_image_tokens(
    input_ids: Sequence[int], grids: Sequence[tuple[int, int]], *, image_token_id: int
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
    if isinstance(grid, ImageGrid):
        return grid.token_grid
    if len(grid) != 2 or any(not isinstance(g, int) or g < 1 for g in grid):
        raise ValueError(f"grid must be (Gh, Gw), two ints >= 1, got {grid!r}")
    return int(grid[0]), int(grid[1])


@dataclass(frozen=True)
class VLMCollator:
    """Pads a list of samples into a batch.

    A sample is a mapping with ``input_ids`` (1-D int tensor), optional ``labels`` (same length,
    default: a copy of ``input_ids``) and optional ``images`` (list of :class:`ProcessedImage`).
    The batch has ``input_ids`` padded with ``pad_token_id``, ``labels`` padded with ``-100``,
    ``attention_mask`` (1 on real tokens), and the images and grids as lists (their sizes vary).
    With ``image_token_id`` set, each sample's image-token count must equal its images' ``Gh*Gw``.
    """

    pad_token_id: int
    image_token_id: int | None = None
    padding_side: Literal["left", "right"] = "left"
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        ids = [torch.as_tensor(s["input_ids"], dtype=torch.long) for s in samples]
        labels = [torch.as_tensor(s.get("labels", s["input_ids"]), dtype=torch.long) for s in samples]
        images = [list(s.get("images", ())) for s in samples]
        for index, (i, lab, imgs) in enumerate(zip(ids, labels, images)):
            self._check_sample(index, i, lab, imgs)
        length = max(len(i) for i in ids)
        return {
            "input_ids": torch.stack([self._pad(i, length, self.pad_token_id) for i in ids]),
            "labels": torch.stack([self._pad(lab, length, IGNORE_INDEX) for lab in labels]),
            "attention_mask": torch.stack([self._pad(torch.ones_like(i), length, 0) for i in ids]),
            "pixel_values": [img.pixel_values for imgs in images for img in imgs],
            "grids": [img.grid for imgs in images for img in imgs],
        }

    def _check_sample(self, index: int, ids: torch.Tensor, labels: torch.Tensor, images: list) -> None:
        if ids.ndim != 1 or labels.shape != ids.shape:
            raise ValueError(
                f"sample {index}: input_ids and labels must be 1-D and equally long, "
                f"got {tuple(ids.shape)} and {tuple(labels.shape)}"
            )
        if self.max_length is not None and len(ids) > self.max_length:
            raise ValueError(f"sample {index}: {len(ids)} tokens exceed max_length={self.max_length}")
        if self.image_token_id is not None:
            found = int((ids == self.image_token_id).sum())
            expected = sum(img.grid.num_tokens for img in images)
            if found != expected:
                raise ValueError(
                    f"sample {index}: {found} image tokens in input_ids but its images need {expected} (sum of Gh*Gw)"
                )

    def _pad(self, x: torch.Tensor, length: int, value: int) -> torch.Tensor:
        pad = (length - len(x), 0) if self.padding_side == "left" else (0, length - len(x))
        return F.pad(x, pad, value=value)
