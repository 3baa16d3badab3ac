"""VidEoMT: an encoder-only ViT that segments video, frame by frame, with propagated queries.

Paper: "VidEoMT: Your ViT is Secretly Also a Video Segmentation Model" (TU/e MPS, 2026), built on
"Your ViT is Secretly an Image Segmentation Model" (EoMT, Kerssies et al., CVPR 2025).
Upstream: github.com/tue-mps/videomt; references here: ``transformers.VideomtForUniversalSegmentation``
(DINOv2-style backbone) and ``transformers.EomtDinov3ForUniversalSegmentation`` (DINOv3, RoPE).

The model in one paragraph: frames are patch-embedded (plus CLS and register tokens, plus learned
position embeddings for the DINOv2 backbone) and run through the first ``depth - num_blocks`` ViT
layers as a flat batch of frames. The last ``num_blocks`` layers run per frame with ``num_queries``
query tokens prepended: frame 0 uses the learned queries, frame t > 0 uses
``query_updater(queries output by frame t-1) + learned queries``. The final norm feeds a class
head (queries), a mask head (queries) and upscale blocks (patch tokens); mask logits are the
einsum of both. Per-frame outputs are concatenated frame-major along dim 0, as the reference does.

Deliberate differences from the references:

- Inputs are validated: rank, floating dtype, non-empty batch, channels, frame size,
  ``bool_masked_pos`` dtype/batch/frames/token count (the references reshape whatever they get).
  Training (labels) is not implemented: passing labels raises instead of computing a loss.
  ``patch_offsets`` (crop bookkeeping EoMT only echoes into its output) raises too.
- ``bool_masked_pos`` is applied by the model: masked patch tokens become the mask token before
  the position embeddings. ``VideomtForUniversalSegmentation.forward`` swallows it through
  ``**kwargs`` and ignores it, so the two models differ on masked inputs; the embeddings modules
  agree on every accepted mask layout (tested bitwise against ``VideomtEmbeddings``).
- 4D input ``(N, C, H, W)`` is N single-frame clips (T=1); the Videomt reference accepts 5D only.
- Masked attention (EoMT's mask annealing) is inference-only: a query layer uses the predicted
  mask iff its ``attn_mask_probs`` entry is 1, runs unmasked at 0, and a value in between (a
  training-time random drop) raises instead of drawing random numbers at inference. The additive
  mask is 0 / dtype-min; the reference adds 1 / dtype-min, which softmax cannot tell apart.
- Numerics copied on purpose, so float64 parity is exact: the DINOv2 attention takes its softmax
  in float32 (the Videomt eager path does), and RoPE patch coordinates are computed in float32.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from candidates.layers import LayerNorm2d, Mlp, RopeEmbedding, apply_rope_to_patches
from candidates.videomt.config import (  # re-exported: candidates.videomt.videomt.VARIANTS etc. stay importable
    ACTIVATIONS, VARIANTS, VidEoMTConfig, videomt_dinov3_small_config, videomt_dinov3_tiny_config,
    videomt_small_config, videomt_tiny_config,
)
from harness.checks import check_type

__all__ = ["VARIANTS", "VidEoMTConfig", "VidEoMT", "VidEoMTOutput", "QueryPropagation", "videomt_tiny",
           "videomt_dinov3_tiny", "videomt_small", "videomt_dinov3_small", "videomt_tiny_config",
           "videomt_dinov3_tiny_config", "videomt_small_config", "videomt_dinov3_small_config"]

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}
# the config accepts every name in ACTIVATIONS; one without a module here would fail only at build time
assert set(_ACTIVATIONS) == set(ACTIVATIONS), (sorted(_ACTIVATIONS), ACTIVATIONS)


class VidEoMTOutput(NamedTuple):
    """Per-frame predictions, frames concatenated frame-major along dim 0 (``T * B``)."""

    masks_queries_logits: Tensor  # (T*B, Q, 2^u * Hp, 2^u * Wp) for u upscale blocks
    class_queries_logits: Tensor  # (T*B, Q, num_labels + 1)
    last_hidden_state: Tensor  # (T*B, Q + prefix + N, D)


# ----------------------------------------------------------------------------- leaf modules


class PatchEmbed(nn.Module):
    """(F, C, H, W) -> (F, N, D) by a stride-``patch`` convolution."""

    def __init__(self, config: VidEoMTConfig) -> None:
        super().__init__()
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.projection(pixels).flatten(2).transpose(1, 2)  # (F, D, h, w) -> (F, N, D)


class Embeddings(nn.Module):
    """Patch tokens (masked where asked, plus learned positions for DINOv2), then CLS + registers."""

    def __init__(self, config: VidEoMTConfig) -> None:
        super().__init__()
        self.config = config
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, config.hidden_size))
        self.patch_embed = PatchEmbed(config)
        if config.backbone == "dinov2":  # DINOv3 has neither: positions come from RoPE, no mask token
            self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
            self.position_embeddings = nn.Parameter(torch.zeros(config.num_patches, config.hidden_size))

    def forward(self, pixel_values: Tensor, bool_masked_pos: Tensor | None = None) -> Tensor:
        """``(B, T, C, H, W)`` or ``(F, C, H, W)`` -> ``(F, prefix + N, D)`` with ``F = B * T``."""
        frames = flatten_frames(pixel_values)
        mask = frame_mask(bool_masked_pos, pixel_values, self.config) if bool_masked_pos is not None else None
        tokens = self.patch_embed(frames)  # (F, N, D)
        if mask is not None:
            if not hasattr(self, "mask_token"):
                raise ValueError("bool_masked_pos needs a mask token; the dinov3 backbone has none")
            tokens = torch.where(mask.unsqueeze(-1), self.mask_token, tokens)
        if hasattr(self, "position_embeddings"):
            tokens = tokens + self.position_embeddings
        batch = tokens.shape[0]
        prefix = [self.cls_token.expand(batch, -1, -1), self.register_tokens.expand(batch, -1, -1)]
        return torch.cat([*prefix, tokens], dim=1)  # (F, 1 + R + N, D)


class RotaryEmbedding(RopeEmbedding):
    """DINOv3 2D RoPE on the patch grid of the input frames -> (cos, sin), each (N, head_dim).

    transformers' rounding (``impl="inv_freq"``), so float64 parity with EoMT-DINOv3 is exact.
    """

    def __init__(self, config: VidEoMTConfig) -> None:
        super().__init__(config.head_dim, theta=config.rope_theta, impl="inv_freq")
        self.patch_size = config.patch_size

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        return super().forward(grid, dtype=pixels.dtype, device=pixels.device)


class Attention(nn.Module):
    """Multi-head self-attention with split q/k/v projections and optional RoPE."""

    def __init__(self, config: VidEoMTConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.scale = config.head_dim**-0.5
        self.softmax_float32 = config.backbone == "dinov2"  # the Videomt eager path's upcast
        self.q_proj = nn.Linear(d, d, bias=config.query_bias)
        self.k_proj = nn.Linear(d, d, bias=config.key_bias)
        self.v_proj = nn.Linear(d, d, bias=config.value_bias)
        self.out_proj = nn.Linear(d, d)

    def forward(
        self, x: Tensor, attention_mask: Tensor | None = None,
        position_embeddings: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        b, n, _ = x.shape
        q, k, v = (proj(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, L, hd)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        if position_embeddings is not None:
            q, k = apply_rope_to_patches(q, *position_embeddings), apply_rope_to_patches(k, *position_embeddings)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # (B, h, L, L)
        if attention_mask is not None:
            scores = scores + attention_mask
        if self.softmax_float32:
            weights = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
        else:
            weights = scores.softmax(dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, n, -1)  # (B, L, D)
        return self.out_proj(out)


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.lambda1


# ----------------------------------------------------------------------------- block


class Layer(nn.Module):
    """Pre-norm ViT block with layer scale on both residual branches."""

    def __init__(self, config: VidEoMTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Attention(config)
        self.layer_scale1 = LayerScale(config.hidden_size)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Mlp(config.hidden_size, config.intermediate_size, act_layer=_ACTIVATIONS[config.hidden_act])
        self.layer_scale2 = LayerScale(config.hidden_size)

    def forward(
        self, x: Tensor, attention_mask: Tensor | None = None,
        position_embeddings: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        x = x + self.layer_scale1(self.attention(self.norm1(x), attention_mask, position_embeddings))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


# ----------------------------------------------------------------------------- temporal propagation


class QueryPropagation(nn.Linear):
    """Carries queries from frame to frame: frame 0 starts from the learned queries, frame t > 0
    from ``update(queries output by frame t-1) + learned queries``.

    It is the model's ``query_updater``, named like the reference's linear so the state-dict keys
    and the traced rows stay those of the reference: a call maps frame t-1's output queries
    (B, Q, D) to their update, and a bug in it is localized here, not in the frame loop.
    """

    def __init__(self, config: VidEoMTConfig) -> None:
        super().__init__(config.hidden_size, config.hidden_size)

    def frame_queries(self, learned: Tensor, previous: Tensor | None, batch: int) -> Tensor:
        """Input queries (B, Q, D) of a frame, from the learned (Q, D) and frame t-1's output queries."""
        if previous is None:  # frame 0
            return learned[None].expand(batch, -1, -1)
        return self(previous) + learned[None]


# ----------------------------------------------------------------------------- heads


class ScaleLayer(nn.Module):
    """2x upsampling: transposed conv, activation, depthwise 3x3, channel LayerNorm."""

    def __init__(self, config: VidEoMTConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.conv1 = nn.ConvTranspose2d(d, d, kernel_size=2, stride=2)
        self.activation = _ACTIVATIONS[config.hidden_act]()
        self.conv2 = nn.Conv2d(d, d, kernel_size=3, padding=1, groups=d, bias=False)
        self.layernorm2d = LayerNorm2d(d, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.layernorm2d(self.conv2(self.activation(self.conv1(x))))


class ScaleBlock(nn.Module):
    def __init__(self, config: VidEoMTConfig) -> None:
        super().__init__()
        self.block = nn.ModuleList(ScaleLayer(config) for _ in range(config.num_upscale_blocks))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.block:
            x = layer(x)
        return x


class MaskHead(nn.Module):
    def __init__(self, config: VidEoMTConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.fc1, self.fc2, self.fc3 = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.activation = _ACTIVATIONS[config.hidden_act]()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.activation(self.fc2(self.activation(self.fc1(x)))))


# ----------------------------------------------------------------------------- input checks


def flatten_frames(pixel_values: Tensor) -> Tensor:
    """``(B, T, C, H, W)`` -> ``(B*T, C, H, W)``; 4D passes through; other ranks, non-float
    dtypes and empty batches (B, T or F of 0) raise."""
    check_type("pixel_values", pixel_values, Tensor)
    if not pixel_values.is_floating_point():  # uint8 images must be normalized first
        raise TypeError(f"pixel_values must be a floating-point tensor (normalized pixels), got {pixel_values.dtype}")
    if pixel_values.ndim not in (4, 5):
        raise ValueError("pixel_values must be (B, T, C, H, W) or (B*T, C, H, W), got shape "
                         f"{tuple(pixel_values.shape)}")
    batch_dims = pixel_values.shape[: pixel_values.ndim - 3]
    if 0 in batch_dims:
        layout = "(B, T)" if pixel_values.ndim == 5 else "(B*T,)"
        raise ValueError(f"pixel_values must hold at least one frame: expected {layout} >= 1, got shape "
                         f"{tuple(pixel_values.shape)}")
    return pixel_values.flatten(0, 1) if pixel_values.ndim == 5 else pixel_values


def frame_mask(mask: Tensor, pixel_values: Tensor, config: VidEoMTConfig) -> Tensor:
    """Validate ``bool_masked_pos`` against the input and return it as (frames, N).

    Accepted: for 4D input of F frames, ``(F, N)`` or ``(F, Hp, Wp)``; for 5D input ``(B, T)``,
    ``(B*T, N)``, ``(B, T, N)`` or ``(B, T, Hp, Wp)``.
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"bool_masked_pos must be a torch.bool tensor, got {got}")
    hp, wp = pixel_values.shape[-2] // config.patch_size, pixel_values.shape[-1] // config.patch_size
    # rank -> (shape, name, how many leading dims index clips and frames)
    if pixel_values.ndim == 5:
        b, t = pixel_values.shape[:2]
        layouts = {2: ((b * t, hp * wp), "(B*T, N)", 1), 3: ((b, t, hp * wp), "(B, T, N)", 2),
                   4: ((b, t, hp, wp), "(B, T, Hp, Wp)", 2)}
    else:
        f = pixel_values.shape[0]
        layouts = {2: ((f, hp * wp), "(F, N)", 1), 3: ((f, hp, wp), "(F, Hp, Wp)", 1)}
    if mask.ndim not in layouts:
        expected = " or ".join(f"{name}={shape}" for shape, name, _ in layouts.values())
        raise ValueError(f"bool_masked_pos must be {expected} for input {tuple(pixel_values.shape)}, "
                         f"got rank {mask.ndim} shape {tuple(mask.shape)}")
    shape, name, frame_dims = layouts[mask.ndim]
    if tuple(mask.shape[:frame_dims]) != shape[:frame_dims]:
        raise ValueError(f"bool_masked_pos batch does not match the input: expected {name}={shape}, "
                         f"got {tuple(mask.shape)}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"bool_masked_pos token count does not match the {hp}x{wp} patch grid: "
                         f"expected {name}={shape}, got {tuple(mask.shape)}")
    return mask.reshape(-1, hp * wp)


# ----------------------------------------------------------------------------- model


class VidEoMT(nn.Module):
    """VidEoMT for video (and, at T=1, image) universal segmentation."""

    def __init__(self, config: VidEoMTConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        if config.backbone == "dinov3":
            self.rope_embeddings = RotaryEmbedding(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_layers))
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.query = nn.Embedding(config.num_queries, config.hidden_size)
        self.query_updater = QueryPropagation(config)
        self.class_predictor = nn.Linear(config.hidden_size, config.num_labels + 1)
        self.mask_head = MaskHead(config)
        self.upscale_block = ScaleBlock(config)
        self.register_buffer("attn_mask_probs", torch.ones(config.num_blocks))

    def forward(
        self,
        pixel_values: Tensor | Sequence[Tensor],
        *,
        bool_masked_pos: Tensor | None = None,
        mask_labels: Sequence[Tensor] | None = None,
        class_labels: Sequence[Tensor] | None = None,
        patch_offsets: Sequence[Tensor] | None = None,
    ) -> VidEoMTOutput:
        """``(B, T, C, H, W)``, a list of T ``(B, C, H, W)`` frames, or ``(B, C, H, W)`` (T=1)."""
        pixels = self._check_inputs(pixel_values, mask_labels, class_labels, patch_offsets)
        b, t = pixels.shape[:2] if pixels.ndim == 5 else (pixels.shape[0], 1)
        x = self.embeddings(pixels, bool_masked_pos)  # (B*T, prefix + N, D)
        rope = self.rope_embeddings(flatten_frames(pixels)) if hasattr(self, "rope_embeddings") else None
        start = self.config.num_layers - self.config.num_blocks
        for layer in self.layers[:start]:
            x = layer(x, position_embeddings=rope)
        x = x.view(b, t, *x.shape[1:])  # (B, T, L, D)

        outputs, propagated = [], None
        for frame in range(t):
            queries = self.query_updater.frame_queries(self.query.weight, propagated, b)  # (B, Q, D)
            out, hidden = self._query_stage(torch.cat((queries, x[:, frame]), dim=1), rope)
            outputs.append(out)
            propagated = hidden[:, : self.config.num_queries]
        return VidEoMTOutput(*(torch.cat(parts, dim=0) for parts in zip(*outputs)))

    def _query_stage(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> tuple[VidEoMTOutput, Tensor]:
        """The last ``num_blocks`` layers on (B, Q + prefix + N, D), then the heads."""
        start = self.config.num_layers - self.config.num_blocks
        mask = None
        for i, layer in enumerate(self.layers[start:]):
            if self.config.masked_attention:
                mask = self._attention_mask(x, float(self.attn_mask_probs[i]))
            x = layer(x, mask, rope)
        sequence = self.layernorm(x)
        masks, classes = self.predict(sequence)
        return VidEoMTOutput(masks, classes, sequence), x

    def _attention_mask(self, x: Tensor, prob: float) -> Tensor | None:
        """EoMT masked attention: queries see patch tokens only inside their predicted masks."""
        if prob == 0.0:
            return None
        if prob != 1.0:
            raise ValueError(f"attn_mask_probs entries must be 0 or 1 at inference, got {prob} "
                             "(values in between randomly drop masks during training)")
        masks, _ = self.predict(self.layernorm(x))
        grid = (self.config.grid_size, self.config.grid_size)
        inside = F.interpolate(masks, size=grid, mode="bilinear").flatten(2) > 0  # (B, Q, N)
        q, start = self.config.num_queries, self.config.num_queries + self.config.num_prefix_tokens
        allowed = torch.ones(x.shape[0], x.shape[1], x.shape[1], dtype=torch.bool, device=x.device)
        allowed[:, :q, start:] = inside
        blocked = torch.zeros_like(allowed, dtype=x.dtype).masked_fill(~allowed, torch.finfo(x.dtype).min)
        return blocked[:, None]  # (B, 1, L, L), broadcast over heads

    def predict(self, sequence: Tensor) -> tuple[Tensor, Tensor]:
        """(B, Q + prefix + N, D) -> mask logits (B, Q, H', W') and class logits (B, Q, K+1)."""
        q = self.config.num_queries
        queries = sequence[:, :q]
        classes = self.class_predictor(queries)
        patches = sequence[:, q + self.config.num_prefix_tokens:].transpose(1, 2)
        patches = patches.reshape(patches.shape[0], -1, self.config.grid_size, self.config.grid_size)  # (B, D, h, w)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_head(queries), self.upscale_block(patches))
        return masks, classes

    def _check_inputs(self, pixel_values, mask_labels, class_labels, patch_offsets) -> Tensor:
        """Guardrails; returns the input as a tensor, (B, T, C, H, W) or (B, C, H, W)."""
        if isinstance(pixel_values, (list, tuple)):
            if not pixel_values or not all(isinstance(f, Tensor) for f in pixel_values):
                raise TypeError("a list of frames must hold one or more (B, C, H, W) tensors, got "
                                f"{[type(f).__name__ for f in pixel_values]}")
            sizes = {tuple(f.shape) for f in pixel_values}
            if len(sizes) != 1:
                raise ValueError(f"all frames must have the same size, got frame shapes {sorted(sizes)}")
            pixel_values = torch.stack(list(pixel_values), dim=1)
        check_type("pixel_values", pixel_values, Tensor, what="a Tensor or a list of frames")
        is_video = pixel_values.ndim == 5
        if mask_labels is not None or class_labels is not None:
            raise ValueError("training labels are not supported: VidEoMT here is inference-only"
                             + (" (and 5D video training has no reference either)" if is_video else ""))
        if is_video and patch_offsets is not None:
            raise ValueError("patch_offsets cannot be combined with 5D video input (B, T, C, H, W): "
                             "frame-to-patch indexing would be ambiguous")
        if patch_offsets is not None:  # EoMT only echoes them into its output, which has no such field here
            raise ValueError("patch_offsets is not supported: it is crop bookkeeping for post-processing that "
                             f"the model never reads; expected None, got {type(patch_offsets).__name__}")
        c, h, w = flatten_frames(pixel_values).shape[1:]
        expected = (self.config.num_channels, self.config.image_size, self.config.image_size)
        if (c, h, w) != expected:
            raise ValueError(f"frames must be (C, H, W)={expected} (learned positions and the mask grid "
                             f"are fixed), got {(c, h, w)}")
        return pixel_values


# ----------------------------------------------------------------------------- model factories


def videomt_tiny(**overrides) -> VidEoMT:
    """The model of :func:`videomt_tiny_config`."""
    return VidEoMT(videomt_tiny_config(**overrides))


def videomt_dinov3_tiny(**overrides) -> VidEoMT:
    """The model of :func:`videomt_dinov3_tiny_config`."""
    return VidEoMT(videomt_dinov3_tiny_config(**overrides))


def videomt_small(**overrides) -> VidEoMT:
    """The model of :func:`videomt_small_config`."""
    return VidEoMT(videomt_small_config(**overrides))


def videomt_dinov3_small(**overrides) -> VidEoMT:
    """The model of :func:`videomt_dinov3_small_config`."""
    return VidEoMT(videomt_dinov3_small_config(**overrides))
