"""Building blocks shared by more than one model family (as timm keeps ``timm/layers``).

A primitive lives here when two families compute exactly the same thing with it; a family file
keeps only what is its own. Attribute names inside each module (``fc1``, ``act``, ``fc2``; the
LayerNorm's ``weight``/``bias``) are those of the upstream models, so state-dict keys and traced
module names do not change when a family imports its primitive from here.

- :class:`LayerNorm2d`: LayerNorm over the channels of a channels-first map (ConvNeXt, VidEoMT).
- :class:`Mlp`: ``fc1 -> activation -> fc2`` on channels-last tokens (ViT-style blocks).
- :func:`patch_grid`: the input check of every patch-embedding ViT (RoPE-Mixed ViT, mFormer,
  DINOv3): a ``(B, C, H, W)`` tensor whose sides are positive multiples of the patch stride.
- DINOv3 2D rotary position embedding (DINOv3 ViT, VidEoMT's DINOv3 backbone):
  :func:`patch_center_coords`, :class:`RopeEmbedding`, :func:`rotate_half`,
  :func:`apply_rope_to_patches`.

DINOv3 RoPE, as upstream (github.com/facebookresearch/dinov3 ``RopePositionEmbedding``): patch
centres ``(i + 0.5) / Hp`` and ``(j + 0.5) / Wp`` mapped to ``[-1, 1]``; ``head_dim / 4``
periods ``theta ** (4k / head_dim)`` per axis; angles ``2*pi*coord / period`` laid out
``[y-freqs, x-freqs]`` twice ("rotate half" pairing); applied to the trailing patch tokens only
(CLS, register and query tokens in front are not rotated). The two public ports round the angle
differently (``impl``): ``"periods"`` divides by the period (the original code, timm),
``"inv_freq"`` multiplies the float32 angle by a float32 inverse frequency (transformers). They
agree to float32 rounding; reproducing the reference's spelling makes float64 parity exact.
The tables are computed in float32 (float64 when the activations are float64) and cast to the
activation dtype at the end, so a model cast to bfloat16 never rotates with bfloat16 frequencies.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.checks import check_choice, check_type, value_error

__all__ = [
    "LayerNorm2d", "Mlp", "RopeImpl", "RopeEmbedding", "patch_center_coords", "patch_grid", "rotate_half",
    "apply_rope_to_patches",
]

RopeImpl = Literal["periods", "inv_freq"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first ``(B, C, H, W)`` tensor."""

    def __init__(self, num_channels: int, *, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


class Mlp(nn.Module):
    """``Linear(dim, hidden_dim) -> activation -> Linear(hidden_dim, dim)`` on the last dimension."""

    def __init__(self, dim: int, hidden_dim: int, *, act_layer: Callable[[], nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def patch_grid(name: str, image: Tensor, *, in_chans: int, stride: int, fix: str | None = None) -> tuple[int, int]:
    """(rows, cols) of the ``stride``-pixel token grid of images ``(B, in_chans, H, W)``.

    ``H`` and ``W`` must be positive multiples of ``stride``: a convolution over an empty side fails
    deep inside torch, and a partial patch would be dropped silently. ``fix`` replaces the default
    advice for a bad side (a family with its own resizing names it).
    """
    check_type(name, image, Tensor, what="a Tensor")
    shape = tuple(image.shape)
    layout_ok = image.ndim == 4 and shape[1] == in_chans
    if not layout_ok or not all(side > 0 and side % stride == 0 for side in shape[2:]):
        advice = fix or f"resize or pad the image to multiples of {stride} pixels"
        raise value_error(f"{name} shape", shape, f"(B, {in_chans}, H, W) with H, W multiples of {stride}",
                          fix=advice if layout_ok else None)
    return shape[2] // stride, shape[3] // stride


# --------------------------------------------------------------------------- DINOv3 rotary embedding


def patch_center_coords(grid: tuple[int, int]) -> Tensor:
    """``(Hp*Wp, 2)`` float32 ``(y, x)`` patch centres in ``[-1, 1]``, row-major over the grid."""
    hp, wp = grid
    ys = torch.arange(0.5, hp, dtype=torch.float32) / hp  # (Hp,) in (0, 1)
    xs = torch.arange(0.5, wp, dtype=torch.float32) / wp  # (Wp,)
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)  # (Hp, Wp, 2)
    return 2.0 * coords.flatten(0, 1) - 1.0  # (Hp*Wp, 2)


class RopeEmbedding(nn.Module):
    """cos/sin tables ``(Hp*Wp, head_dim)`` for a patch grid; no parameters, no buffers.

    The frequency table is rebuilt in float32 on every call (it has ``head_dim / 4`` entries), so
    casting the model to a low-precision dtype can never quantize it.
    """

    def __init__(self, head_dim: int, *, theta: float, impl: RopeImpl) -> None:
        super().__init__()
        check_choice("impl", impl, ("periods", "inv_freq"))
        self.head_dim = head_dim
        self.theta = theta
        self.impl = impl

    def periods(self) -> Tensor:
        """``(head_dim / 4,)`` float32 periods ``theta ** (4k / head_dim)``, as each upstream spells it."""
        if self.impl == "periods":
            exponents = 2.0 * torch.arange(self.head_dim // 4, dtype=torch.float32) / (self.head_dim // 2)
            return self.theta ** exponents
        return self.theta ** torch.arange(0, 1, 4 / self.head_dim, dtype=torch.float32)

    def forward(
        self, grid: tuple[int, int], *, dtype: torch.dtype, device: torch.device | str
    ) -> tuple[Tensor, Tensor]:
        compute = torch.promote_types(torch.float32, dtype)  # never below float32
        coords = patch_center_coords(grid).to(device)[:, :, None]  # (N, 2, 1) float32
        periods = self.periods().to(device)  # (head_dim/4,) float32
        if self.impl == "periods":
            angles = 2 * math.pi * coords.to(compute) / periods.to(compute)  # (N, 2, head_dim/4)
        else:
            angles = (2 * math.pi * coords).to(compute) * (1 / periods).to(compute)
        angles = angles.flatten(1)  # (N, head_dim/2): [y-freqs, x-freqs]
        angles = torch.cat([angles, angles], dim=-1)  # (N, head_dim): rotate-half layout
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope_to_patches(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the last ``len(cos)`` tokens of ``x`` ``(B, heads, T, head_dim)``; the tokens in front stay put."""
    num_patches = cos.shape[-2]
    prefix, patches = x.split((x.shape[-2] - num_patches, num_patches), dim=-2)
    rotated = patches * cos + rotate_half(patches) * sin
    return torch.cat((prefix, rotated), dim=-2)
