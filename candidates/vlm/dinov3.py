"""DINOv3 Vision Transformer with 2D RoPE on the true (possibly rectangular) patch grid.

Paper: Siméoni et al., "DINOv3", arXiv:2508.10104.
Upstream: github.com/facebookresearch/dinov3 (``RopePositionEmbedding``), ported as
``transformers.DINOv3ViTModel`` and timm ``vit_*_patch16_dinov3`` (``timm.models.eva.Eva`` with
``RotaryEmbeddingDinoV3``). Both ports are parity references for this file.

The encoder takes any ``H, W`` that are multiples of the patch size. The patch grid
``(Hp, Wp) = (H / p, W / p)`` is read from the patch embedding's output shape and is the only
source of RoPE positions (never a ``sqrt(N)`` guess), and it is returned with the tokens so that a
projector downstream can fold a rectangular grid.

RoPE, as upstream: patch centres ``(i + 0.5) / Hp`` and ``(j + 0.5) / Wp`` mapped to ``[-1, 1]``;
``head_dim / 4`` periods ``theta ** (4k / head_dim)`` per axis; angles ``2*pi*coord / period``
laid out ``[y-freqs, x-freqs]`` twice ("rotate half" pairing); applied to patch tokens only (CLS
and register tokens are not rotated).

Deliberate differences:

- cos/sin are computed in float32 (float64 when the model runs in float64) and cast to the
  activation dtype at the end, whatever the parameter dtype; the transformers port casts its
  frequency buffer with the model, so in bfloat16 it rotates with bfloat16 frequencies.
- The two ports round differently (``angle = 2*pi*c / period`` in timm and the original code;
  ``(2*pi*c in float32) * (1 / period in float32)`` in transformers). They agree to float32
  rounding; ``rope_impl`` reproduces either one bit for bit so that float64 parity is exact.
- Attention stores q/k/v as one fused ``qkv`` weight (timm's key layout) but applies it as three
  traced projections ``q_proj``/``k_proj``/``v_proj`` (transformers' structure); the key never
  has a bias (absent upstream too, or a masked zero); ``q_bias``/``v_bias`` are separate parameters.
- Training-time RoPE coordinate augmentation (shift/jitter/rescale), the mask token and
  stochastic depth are not implemented: this encoder is for inference and feature extraction.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Literal, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DinoV3Config", "DinoV3Output", "DinoV3ViT", "RopeEmbedding", "VARIANTS",
    "patch_center_coords", "convert_timm_state_dict", "convert_transformers_state_dict", "dinov3_vit",
]

RopeImpl = Literal["periods", "inv_freq"]
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class DinoV3Config:
    """Architecture of a DINOv3 ViT.

    Attributes:
        patch_size: side of the square, non-overlapping patches (pixels).
        embed_dim, depth, num_heads: width, number of blocks, attention heads.
        mlp_ratio: MLP hidden width over ``embed_dim``.
        num_reg_tokens: register ("storage") tokens after the CLS token.
        qkv_bias: query and value biases (the key never has one).
        rope_theta: base of the RoPE period schedule.
        rope_impl: ``"periods"`` (original code, timm) or ``"inv_freq"`` (transformers) rounding.
        norm_eps: LayerNorm epsilon.
    """

    patch_size: int = 16
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_reg_tokens: int = 4
    qkv_bias: bool = False
    rope_theta: float = 100.0
    rope_impl: RopeImpl = "periods"
    norm_eps: float = 1e-5
    in_chans: int = 3

    def __post_init__(self) -> None:
        for name in ("patch_size", "embed_dim", "depth", "num_heads", "in_chans"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DinoV3Config.{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.num_reg_tokens, int) or self.num_reg_tokens < 0:
            raise ValueError(f"DinoV3Config.num_reg_tokens must be an int >= 0, got {self.num_reg_tokens!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim must be divisible by num_heads, got embed_dim={self.embed_dim}, num_heads={self.num_heads}"
            )
        if self.head_dim % 4:
            raise ValueError(
                f"2D RoPE needs head_dim divisible by 4 (two axes, rotate-half pairs), got head_dim={self.head_dim}"
            )
        if self.mlp_hidden_dim < 1:
            raise ValueError(f"mlp_ratio * embed_dim must be >= 1, got mlp_ratio={self.mlp_ratio!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if self.rope_impl not in ("periods", "inv_freq"):
            raise ValueError(f"rope_impl must be 'periods' or 'inv_freq', got {self.rope_impl!r}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def num_prefix_tokens(self) -> int:
        """CLS + register tokens in front of the patch tokens."""
        return 1 + self.num_reg_tokens


class DinoV3Output(NamedTuple):
    """Encoder output: normalized tokens ``(B, prefix + Hp*Wp, D)`` and the patch grid."""

    last_hidden_state: torch.Tensor
    patch_grid: tuple[int, int]
    num_prefix_tokens: int

    @property
    def patch_tokens(self) -> torch.Tensor:
        """``(B, Hp*Wp, D)``, row-major over the grid."""
        return self.last_hidden_state[:, self.num_prefix_tokens:]


# --------------------------------------------------------------------------- leaf modules


class PatchEmbed(nn.Module):
    """Non-overlapping ``p x p`` patches -> tokens on their ``(Hp, Wp)`` grid, channels last."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        _check_pixels(pixel_values, self.patch_size, self.proj.in_channels)
        x = self.proj(pixel_values)  # (B, D, Hp, Wp)
        return x.permute(0, 2, 3, 1)  # (B, Hp, Wp, D)


def _check_pixels(pixel_values: torch.Tensor, patch_size: int, channels: int) -> None:
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != channels:
        raise ValueError(f"pixel_values must be (B, {channels}, H, W), got shape {tuple(pixel_values.shape)}")
    height, width = pixel_values.shape[-2:]
    if height == 0 or width == 0 or height % patch_size or width % patch_size:
        raise ValueError(
            f"image height and width must be positive multiples of the patch size {patch_size}, "
            f"got {height}x{width}; resize with candidates.vlm.processor.ImageProcessor"
        )


def patch_center_coords(grid: tuple[int, int]) -> torch.Tensor:
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
        self.head_dim = head_dim
        self.theta = theta
        self.impl = impl

    def periods(self) -> torch.Tensor:
        """``(head_dim / 4,)`` float32 periods ``theta ** (4k / head_dim)``, as each upstream spells it."""
        if self.impl == "periods":
            exponents = 2.0 * torch.arange(self.head_dim // 4, dtype=torch.float32) / (self.head_dim // 2)
            return self.theta ** exponents
        return self.theta ** torch.arange(0, 1, 4 / self.head_dim, dtype=torch.float32)

    def forward(
        self, grid: tuple[int, int], *, dtype: torch.dtype, device: torch.device | str
    ) -> tuple[torch.Tensor, torch.Tensor]:
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


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope_to_patches(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the last ``len(cos)`` tokens of ``x`` ``(B, H, T, hd)``; the prefix tokens stay put."""
    num_patches = cos.shape[0]
    prefix, patches = x.split((x.shape[-2] - num_patches, num_patches), dim=-2)
    rotated = patches * cos + rotate_half(patches) * sin
    return torch.cat((prefix, rotated), dim=-2)


class Projection(nn.Module):
    """``x @ weight.T + bias`` with weights held by the parent (a block of the fused ``qkv`` weight).

    A module of its own so that parity tracing compares each of q, k, v with its transformers
    twin (``q_proj``/``k_proj``/``v_proj``), which localizes a query- or value-bias error.
    """

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)


class Attention(nn.Module):
    """Multi-head self-attention with RoPE on the patch tokens.

    The q, k, v weights are stored fused as ``qkv.weight`` (rows ``[q; k; v]``, timm's layout, so
    its checkpoints load by name) and applied as three projections (transformers' structure).
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)  # weight storage only, see the class docstring
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.q_proj, self.k_proj, self.v_proj = Projection(), Projection(), Projection()
        self.proj = nn.Linear(dim, dim)

    def project(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries and keys (rotated) and values, each ``(B, heads, T, head_dim)``."""
        batch, tokens, dim = x.shape
        w_q, w_k, w_v = self.qkv.weight.chunk(3)  # 3 x (D, D)
        q = self.q_proj(x, w_q, self.q_bias)  # (B, T, D)
        k = self.k_proj(x, w_k, None)  # the key never has a bias
        v = self.v_proj(x, w_v, self.v_bias)
        q, k, v = (t.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        cos, sin = rope
        return apply_rope_to_patches(q, cos, sin), apply_rope_to_patches(k, cos, sin), v  # (B, heads, T, head_dim)

    def logits(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Pre-softmax attention scores ``(B, heads, T, T)`` (for inspection and tests)."""
        q, k, _ = self.project(x, rope)
        return (q @ k.transpose(-2, -1)) * self.scale

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.project(x, rope)
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, heads, T, head_dim)
        x = x.transpose(1, 2).reshape(batch, tokens, dim)  # (B, T, D)
        return self.proj(x)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# --------------------------------------------------------------------------- block, model


class Block(nn.Module):
    """Pre-norm transformer block with layer scale on both branches."""

    def __init__(self, config: DinoV3Config) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.attn = Attention(dim, config.num_heads, qkv_bias=config.qkv_bias)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.mlp = Mlp(dim, config.mlp_hidden_dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x


class DinoV3ViT(nn.Module):
    """DINOv3 encoder: ``(B, C, H, W)`` -> :class:`DinoV3Output` (tokens and patch grid)."""

    def __init__(self, config: DinoV3Config) -> None:
        super().__init__()
        if not isinstance(config, DinoV3Config):
            raise TypeError(f"config must be a DinoV3Config, got {type(config).__name__}")
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_token = nn.Parameter(torch.zeros(1, config.num_reg_tokens, dim)) if config.num_reg_tokens else None
        self.rope = RopeEmbedding(config.head_dim, theta=config.rope_theta, impl=config.rope_impl)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.trunc_normal_(token, std=0.02)

    def prefix_tokens(self, batch: int) -> torch.Tensor:
        """``(B, 1 + R, D)``: CLS then register tokens."""
        tokens = [self.cls_token] + ([self.reg_token] if self.reg_token is not None else [])
        return torch.cat(tokens, dim=1).expand(batch, -1, -1)

    def forward(self, pixel_values: torch.Tensor) -> DinoV3Output:
        patches = self.patch_embed(pixel_values)  # (B, Hp, Wp, D)
        batch, hp, wp, dim = patches.shape
        rope = self.rope((hp, wp), dtype=patches.dtype, device=patches.device)  # 2 x (Hp*Wp, head_dim)
        x = torch.cat([self.prefix_tokens(batch), patches.reshape(batch, hp * wp, dim)], dim=1)  # (B, 1+R+N, D)
        for block in self.blocks:
            x = block(x, rope)
        return DinoV3Output(self.norm(x), (hp, wp), self.config.num_prefix_tokens)


# --------------------------------------------------------------------------- key mapping

_TRANSFORMERS_RULES: tuple[tuple[str, str], ...] = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.register_tokens$", "reg_token"),
    (r"^embeddings\.patch_embeddings\.", "patch_embed.proj."),
    (r"^model\.layer\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (r"^model\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^model\.layer\.(\d+)\.mlp\.up_proj\.", r"blocks.\1.mlp.fc1."),
    (r"^model\.layer\.(\d+)\.mlp\.down_proj\.", r"blocks.\1.mlp.fc2."),
    (r"^model\.layer\.(\d+)\.(norm[12])\.", r"blocks.\1.\2."),
    (r"^norm\.", "norm."),
)
_QKV = re.compile(r"^model\.layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$")


def convert_transformers_state_dict(state: Mapping[str, torch.Tensor]) -> StateDict:
    """``transformers.DINOv3ViTModel`` state dict -> :class:`DinoV3ViT` state dict (pure).

    q/k/v projections are stacked into ``attn.qkv``; their biases become ``q_bias``/``v_bias``.
    The mask token (masked-image pretraining only) is dropped. A key bias, a gated MLP or any
    unknown key raises ``ValueError``.
    """
    out: StateDict = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in state.items():
        if key == "embeddings.mask_token" or (key == "embeddings.register_tokens" and value.shape[1] == 0):
            continue
        if m := _QKV.match(key):
            qkv.setdefault(m[1], {})[f"{m[2]}.{m[3]}"] = value
            continue
        new = _apply_first(key, _TRANSFORMERS_RULES)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"unsupported transformers DINOv3 keys (gated MLP? different model?): {sorted(unknown)}")
    for layer, parts in qkv.items():
        out.update(_stack_qkv(layer, parts))
    return out


def _stack_qkv(layer: str, parts: Mapping[str, torch.Tensor]) -> StateDict:
    missing = {"q.weight", "k.weight", "v.weight"} - parts.keys()
    if missing:
        raise ValueError(f"layer {layer}: missing attention projections {sorted(missing)}")
    if "k.bias" in parts:
        raise ValueError(f"layer {layer}: a key bias is not supported (DINOv3 has none); got k_proj.bias")
    if ("q.bias" in parts) != ("v.bias" in parts):
        raise ValueError(
            f"layer {layer}: query and value biases must both be present or both absent, got {sorted(parts)}"
        )
    out = {f"blocks.{layer}.attn.qkv.weight": torch.cat([parts["q.weight"], parts["k.weight"], parts["v.weight"]])}
    if "q.bias" in parts:
        out[f"blocks.{layer}.attn.q_bias"] = parts["q.bias"]
        out[f"blocks.{layer}.attn.v_bias"] = parts["v.bias"]
    return out


_TIMM_RULES: tuple[tuple[str, str], ...] = (
    (r"^(cls_token|reg_token)$", r"\1"),
    (r"^patch_embed\.proj\.", "patch_embed.proj."),
    (r"^blocks\.(\d+)\.gamma_([12])$", r"blocks.\1.ls\2.gamma"),
    (r"^blocks\.(\d+)\.attn\.(qkv\.weight|q_bias|v_bias)$", r"blocks.\1.attn.\2"),
    (r"^blocks\.(\d+)\.(attn\.proj|mlp\.fc1|mlp\.fc2|norm1|norm2)\.", r"blocks.\1.\2."),
    (r"^norm\.", "norm."),
)


def convert_timm_state_dict(state: Mapping[str, torch.Tensor]) -> StateDict:
    """timm ``vit_*_patch16_dinov3`` (``Eva``) state dict -> :class:`DinoV3ViT` state dict (pure).

    The names are nearly identical; layer scales move from ``gamma_1`` to ``ls1.gamma``. A
    classifier ``head`` is dropped (this is a feature encoder). Absolute position embeddings,
    SwiGLU MLPs or any other unknown key raise ``ValueError``; so does a non-zero key bias.
    """
    out: StateDict = {}
    unknown = []
    for key, value in state.items():
        if key.startswith("head."):
            continue
        if key.endswith(".attn.k_bias"):
            if torch.count_nonzero(value):
                raise ValueError(f"{key}: a non-zero key bias is not supported (DINOv3 masks it to zero)")
            continue
        new = _apply_first(key, _TIMM_RULES)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"unsupported timm DINOv3 keys (abs pos embed? SwiGLU? different model?): {sorted(unknown)}")
    return out


def _apply_first(key: str, rules: tuple[tuple[str, str], ...]) -> str | None:
    for pattern, replacement in rules:
        if re.search(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


# --------------------------------------------------------------------------- variants, factories

VARIANTS: dict[str, DinoV3Config] = {
    "vit_small_patch16_dinov3": DinoV3Config(embed_dim=384, depth=12, num_heads=6),
    "vit_small_patch16_dinov3_qkvb": DinoV3Config(embed_dim=384, depth=12, num_heads=6, qkv_bias=True),
    "vit_base_patch16_dinov3": DinoV3Config(embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_dinov3": DinoV3Config(embed_dim=1024, depth=24, num_heads=16),
    # Tests and parity pairs: every code path (registers, q/v bias, several heads) at toy width.
    "dinov3_tiny": DinoV3Config(embed_dim=32, depth=2, num_heads=2, qkv_bias=True),
}


def dinov3_vit(variant: str = "vit_small_patch16_dinov3", **overrides) -> DinoV3ViT:
    """A randomly initialized :class:`DinoV3ViT`; ``overrides`` replace config fields."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown DINOv3 variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return DinoV3ViT(replace(VARIANTS[variant], **overrides))
