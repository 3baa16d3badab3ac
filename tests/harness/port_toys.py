"""Toy pairs of independently written models: other names, fused vs split, other layouts.

``FusedBlock`` and ``SplitBlock`` compute the same pre-norm transformer block: one with a fused
``qkv`` projection, a ``(C,)`` layer scale and a linear MLP; the other with ``query``/``key``/
``value`` modules, a differently named scale and a 1x1 ``Conv1d`` as first MLP layer.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v


class FusedBlock(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2, scale_power: float = 0.5, eps: float = 1e-6) -> None:
        super().__init__()
        self.heads, self.scale_power = heads, scale_power
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))
        self.fc1 = nn.Linear(dim, 3 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(3 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = attention(q, k, v, (d // self.heads) ** -self.scale_power)  # (B, heads, N, d/heads)
        x = x + self.gamma * self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(self.act(self.fc1(x)))


class SplitAttention(nn.Module):
    def __init__(self, dim: int, heads: int, key_first: bool = False) -> None:
        super().__init__()
        self.heads, self.key_first = heads, key_first
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        b, n, d = y.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

        if self.key_first:  # same maths, the projections used in another order
            k, q = split(self.key(y)), split(self.query(y))
        else:
            q, k = split(self.query(y)), split(self.key(y))
        v = split(self.value(y))
        return attention(q, k, v, (d // self.heads) ** -0.5).transpose(1, 2).reshape(b, n, d)


class SplitBlock(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2, key_first: bool = False) -> None:
        super().__init__()
        self.ln_a = nn.LayerNorm(dim, eps=1e-6)
        self.attention = SplitAttention(dim, heads, key_first)
        self.out = nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.ones(dim))
        self.up = nn.Conv1d(dim, 3 * dim, 1)
        self.down = nn.Linear(3 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.scale * self.out(self.attention(self.ln_a(x)))
        h = self.up(x.transpose(1, 2)).transpose(1, 2)  # (B, N, 3C) through a (B, 3C, N) conv
        return x + self.down(F.gelu(h))


class ConvNet(nn.Module):
    """Conv, BatchNorm, ReLU, a (C, 1, 1) scale, pooled to (N, C) and a linear head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.layer_scale = nn.Parameter(torch.ones(8, 1, 1))
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_scale * self.act(self.bn(self.conv(x)))
        return self.head(x.mean((2, 3)))


class ChannelsLastNet(nn.Module):
    """The same network written channels-last: NHWC inside, a (C,) scale, a 1x1 conv head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.relu = nn.ReLU()
        self.gain = nn.Parameter(torch.ones(8))
        self.classifier = nn.Conv2d(8, classes, 1)
        self.register_buffer("pixel_index", torch.arange(4))  # computed by the model, never copied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x)).permute(0, 2, 3, 1) * self.gain  # (B, H, W, C)
        pooled = x.mean((1, 2))[:, :, None, None]  # (B, C, 1, 1)
        return self.classifier(pooled).flatten(1)


class Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class SequentialConvBlock(nn.Module):
    """torchvision's ConvNeXt block layout: the branch one ``Sequential`` holding ``Permute``
    modules (no twin on the other side), the ``(C, 1, 1)`` layer scale applied in the block's code."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), Permute(0, 2, 3, 1),
                                   nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim),
                                   Permute(0, 3, 1, 2))
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_scale * self.block(x) + x


class FunctionalConvBlock(nn.Module):
    """timm's layout of the same block: permutes in code, a ``(C,)`` layer scale ``gamma``."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm, self.fc1, self.act, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv_dw(x).permute(0, 2, 3, 1))
        y = self.fc2(self.act(self.fc1(y))).permute(0, 3, 1, 2)
        return x + y * self.gamma.view(1, -1, 1, 1)


class SharedReluBlock(nn.Module):
    """torchvision's ResNet basic block: one ReLU module called twice, the second after the residual add."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.conv1, self.conv2, self.relu = nn.Conv2d(dim, dim, 3, padding=1), nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))) + x)


class TwoReluBlock(nn.Module):
    """timm's layout of the same block: one activation module per use."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.conv_a, self.act_a = nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU()
        self.conv_b, self.act_b = nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_b(self.conv_b(self.act_a(self.conv_a(x))) + x)


class NormAct(nn.BatchNorm2d):
    """timm's ``BatchNormAct2d`` layout: the activation applied inside the norm module, as its child
    (``act``, a SiLU unless given)."""

    def __init__(self, channels: int, act: nn.Module | None = None) -> None:
        super().__init__(channels)
        self.act = nn.SiLU() if act is None else act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class FunctionalNormAct(nn.BatchNorm2d):
    """A batch norm applying its activation inside through a function (``torch.relu`` unless
    given): the norm has no child, its call holds both steps."""

    def __init__(self, channels: int, act: Callable[[torch.Tensor], torch.Tensor] = torch.relu) -> None:
        super().__init__(channels)
        self.act_fn = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_fn(super().forward(x))


class ConvNormActStack(nn.Module):
    """Three conv -> BatchNorm -> SiLU stages, each a module of its own (torchvision's layout)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1) for _ in range(3))
        self.norms = nn.ModuleList(nn.BatchNorm2d(dim) for _ in range(3))
        self.acts = nn.ModuleList(nn.SiLU() for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm, act in zip(self.convs, self.norms, self.acts):
            x = act(norm(conv(x)))
        return x


class ConvNormActFused(nn.Module):
    """The same stages with the activation inside the norm (timm's layout)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(dim, dim, 3, padding=1), NormAct(dim)
        self.conv_b, self.bn_b = nn.Conv2d(dim, dim, 3, padding=1), NormAct(dim)
        self.conv_c, self.bn_c = nn.Conv2d(dim, dim, 3, padding=1), NormAct(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_c(self.conv_c(self.bn_b(self.conv_b(self.bn_a(self.conv_a(x))))))


class ConvNormFunctionalAct(nn.Module):
    """The same stages with plain BatchNorm modules and the activation applied in ``forward``
    (torchvision's Inception applies ``F.relu`` after its ``bn`` module); ``skip`` leaves it out
    after one stage."""

    def __init__(self, dim: int = 8, skip: str | None = None) -> None:
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim)
        self.conv_b, self.bn_b = nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim)
        self.conv_c, self.bn_c = nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim)
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in "abc":
            x = getattr(self, f"bn_{stage}")(getattr(self, f"conv_{stage}")(x))
            x = x if stage == self.skip else F.silu(x)
        return x


class ChannelsLastConv(nn.Module):
    """A conv written channels-last: ``(B, H, W, C)`` in and out, the weight kept as torch stores it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x.permute(0, 3, 1, 2), self.weight, self.bias, padding=1).permute(0, 2, 3, 1)


class ChannelsLastPool(nn.Module):
    """Channels-last conv then global mean pool and a linear head."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv, self.head = ChannelsLastConv(channels), nn.Linear(channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x.permute(0, 2, 3, 1)).mean((1, 2)))


class ChannelsFirstPool(nn.Module):
    """The same in NCHW."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(channels, channels, 3, padding=1), nn.Linear(channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


class KernelHWIO(nn.Module):
    """A conv whose kernel is stored as TF/JAX store it, ``(kh, kw, C_in, C_out)``; ``order`` is how
    it is permuted for ``F.conv2d`` (``(3, 2, 0, 1)`` is right; ``(3, 2, 1, 0)`` swaps kh and kw)."""

    def __init__(self, channels: int, order: tuple[int, ...] = (3, 2, 0, 1)) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(3, 3, channels, channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel.permute(*self.order), self.bias, padding=1)


class FunctionalHWIONet(nn.Module):
    """A 3x3 then a square 1x1 conv, kernels stored ``(kh, kw, C_in, C_out)`` and permuted to torch's
    order where they are used, as a JAX port written with ``F.conv2d`` keeps them."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.w3 = nn.Parameter(torch.randn(3, 3, 3, channels))
        self.b3 = nn.Parameter(torch.zeros(channels))
        self.w1 = nn.Parameter(torch.randn(1, 1, channels, channels))
        self.b1 = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.conv2d(x, self.w3.permute(3, 2, 0, 1), self.b3, padding=1))
        return F.conv2d(x, self.w1.permute(3, 2, 0, 1), self.b1)


class FusedAttention(nn.Module):
    """Self-attention with one ``qkv`` projection, as timm writes it."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(attention(q, k, v, (d // self.heads) ** -0.5).transpose(1, 2).reshape(b, n, d))


class TransposedAttention(nn.Module):
    """The same with ``q``/``k``/``v``/``o`` stored ``(C_in, C_out)`` as JAX keeps them and
    transposed where used; every matrix is square, so their shapes alone cannot tell the layout."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        for name in "qkvo":
            setattr(self, f"w{name}", nn.Parameter(torch.randn(dim, dim)))
            setattr(self, f"b{name}", nn.Parameter(torch.zeros(dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (F.linear(x, getattr(self, f"w{name}").t(), getattr(self, f"b{name}"))
                   .reshape(b, n, self.heads, d // self.heads).transpose(1, 2) for name in "qkv")
        a = attention(q, k, v, (d // self.heads) ** -0.5).transpose(1, 2).reshape(b, n, d)
        return F.linear(a, self.wo.t(), self.bo)


class MatmulMlp(nn.Module):
    """A two-layer MLP written as ``x @ W + b`` with square ``(C_in, C_out)`` matrices."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(dim, dim)), nn.Parameter(torch.zeros(dim))
        self.w2, self.b2 = nn.Parameter(torch.randn(dim, dim)), nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x @ self.w1 + self.b1) @ self.w2 + self.b2


class BiasedAttention(nn.Module):
    """Fused-qkv attention (8 channels, 2 heads) adding ``self.bias()``: subclasses say how they keep a
    relative position bias (a table gathered through an index, or whole)."""

    channels, heads = 8, 2

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(self.channels, 3 * self.channels), nn.Linear(self.channels, self.channels)

    def bias(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5 + self.bias()
        return self.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class WholeBiasAttention(BiasedAttention):
    """A port keeping its relative position bias whole, as its own ``(heads, tokens, tokens)`` parameter."""

    def __init__(self, tokens: int) -> None:
        super().__init__()
        self.rel_bias = nn.Parameter(torch.zeros(self.heads, tokens, tokens))

    def bias(self) -> torch.Tensor:
        return self.rel_bias


class MaskedWindowAttention(nn.Module):
    """A one-head fused-qkv attention over windows ``(B, T, dim)``, adding ``mask`` to its scores when
    given one (a shifted-window mask): the original's signature ``(x, mask=None)``; ports subclass it
    to take the mask another way."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, T, T)
        return self.proj((scores if mask is None else scores + mask).softmax(-1) @ v)


class ConvBn(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))


class ShortcutFirst(nn.Module):
    """A residual block that runs its projection shortcut before its main branch (a ``Sequential``
    of conv-norm units); ``residual=False`` drops the shortcut and the add."""

    def __init__(self, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.shortcut = ConvBn(4, 8)
        self.layer = nn.Sequential(ConvBn(4, 8), nn.ReLU(), ConvBn(8, 8))
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.residual:
            return self.activation(self.layer(x))
        shortcut = self.shortcut(x)
        return self.activation(self.layer(x) + shortcut)


class ShortcutLast(nn.Module):
    """The same block written with flat conv/norm names and the shortcut computed last."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.act1 = nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.downsample = ConvBn(4, 8)
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(y + self.downsample(x))


# How a port of :class:`ShortcutLast` joins its main branch ``y`` and its shortcut ``s``: right, or with
# one bug after the shortcut's norm (the add dropped, the ReLU applied before it, the final ReLU left out)
ENDINGS = {"right": lambda y, s: F.relu(y + s), "add dropped": lambda y, s: F.relu(y),
           "relu before the add": lambda y, s: F.relu(y) + s, "final relu dropped": lambda y, s: y + s}


class PortedShortcut(nn.Module):
    """:class:`ShortcutLast` written by hand with the same main-branch names, its shortcut a raw
    kernel ``proj_kernel`` and a norm ``proj_norm``, or (``folded``) that norm stored folded,
    ``x * proj_scale + proj_shift``, tensors of ``shape`` (``(8,)``, ``(8, 1, 1)``, ``(1, 8, 1, 1)``);
    ``shortcut_first``: computed before the main branch; ``ending``: a key of :data:`ENDINGS`."""

    def __init__(self, folded: bool = True, shape: tuple[int, ...] = (8,), shortcut_first: bool = False,
                 ending: str = "right") -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.proj_kernel = nn.Parameter(torch.zeros(8, 4, 3, 3))
        if folded:
            self.proj_scale, self.proj_shift = nn.Parameter(torch.ones(shape)), nn.Parameter(torch.zeros(shape))
        else:
            self.proj_norm = nn.BatchNorm2d(8)
        self.folded, self.shortcut_first, self.join = folded, shortcut_first, ENDINGS[ending]

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        s = F.conv2d(x, self.proj_kernel, padding=1)
        if not self.folded:
            return self.proj_norm(s)
        scale, shift = self.proj_scale, self.proj_shift
        if scale.ndim == 1:  # (C,) broadcast along the channels of (B, C, H, W)
            scale, shift = scale[:, None, None], shift[:, None, None]
        return s * scale + shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shortcut(x) if self.shortcut_first else None
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return self.join(y, self.shortcut(x) if s is None else s)


def ported_shortcut(reference: ShortcutLast, norm_eps: float | None = None, **options: Any) -> PortedShortcut:
    """A :class:`PortedShortcut` (``options``) holding ``reference``'s weights, its shortcut norm
    folded where the port stores it folded (with ``norm_eps``, by default the norm's own)."""
    port = PortedShortcut(**options).to(reference.conv1.weight.dtype).eval()
    port.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("downsample")},
                         strict=False)
    conv, norm = reference.downsample
    with torch.no_grad():
        port.proj_kernel.copy_(conv.weight)
        if not port.folded:
            port.proj_norm.load_state_dict(norm.state_dict())
            return port
        scale = norm.weight * (norm.running_var + (norm.eps if norm_eps is None else norm_eps)).rsqrt()
        port.proj_scale.copy_(scale.reshape(port.proj_scale.shape))
        port.proj_shift.copy_((norm.bias - norm.running_mean * scale).reshape(port.proj_shift.shape))
    return port


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


class BottleneckFirst(nn.Module):
    """A strided bottleneck block (1x1, 3x3 with the stride, 1x1) whose 1x1 projection shortcut runs
    first: with ``cin == cout`` its three 1x1 kernels all have one shape."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.proj = conv_bn(cin, cout, 1, 2)
        self.f = nn.Sequential(conv_bn(cin, cout, 1), nn.ReLU(), conv_bn(cout, cout, 3, 2), nn.ReLU(), conv_bn(cout, cout, 1))
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.proj(x) + self.f(x))


class BottleneckLast(nn.Module):
    """The same block with flat names and the shortcut computed last."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.act1 = conv_bn(cin, cout, 1), nn.ReLU()
        self.conv2, self.act2 = conv_bn(cout, cout, 3, 2), nn.ReLU()
        self.conv3 = conv_bn(cout, cout, 1)
        self.downsample = conv_bn(cin, cout, 1, 2)
        self.act3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.act3(y + self.downsample(x))


class ConvPatches(nn.Module):
    """A patch embedding as torch writes it: a 4x4 stride-4 conv, then the tokens ``(B, N, D)``."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ChannelsLastPatches(nn.Module):
    """The same as JAX ports write it: each patch flattened in ``(p, p, C)`` order, then a linear layer."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, 4 * 4 * 3))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        patches = x.permute(0, 2, 3, 1).reshape(b, h // 4, 4, w // 4, 4, c).permute(0, 1, 3, 2, 4, 5)
        return F.linear(patches.reshape(b, (h // 4) * (w // 4), 4 * 4 * c), self.weight, self.bias)


def feature_maps(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def randomized(model: nn.Module, seed: int) -> nn.Module:
    """``model`` in float64 and eval mode with every parameter and BatchNorm statistic re-drawn."""
    generator = torch.Generator().manual_seed(seed)
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.3)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator, dtype=torch.float64) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator, dtype=torch.float64) + 0.5)
    return model


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def images(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class AddmmMlp(MatmulMlp):
    """The same MLP written with ``torch.addmm(b, x, W)`` on the flattened tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        hidden = F.gelu(torch.addmm(self.b1, flat, self.w1))
        return torch.addmm(self.b2, hidden, self.w2).reshape(x.shape)


class SdpaFused(nn.Module):
    """An attention of 8 features in 2 heads through ``F.scaled_dot_product_attention``, one ``qkv``."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(8, 24), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class SdpaSplit(nn.Module):
    """:class:`SdpaFused` with split projections. ``exchanged``: queries made by ``k_proj`` and keys
    by ``q_proj`` (each weight right, used in the other's place)."""

    def __init__(self, exchanged: bool = False) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(8, 8) for _ in range(4))
        self.exchanged = exchanged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        heads = (lambda t: t.reshape(b, n, 2, 4).transpose(1, 2))
        q_proj, k_proj = (self.k_proj, self.q_proj) if self.exchanged else (self.q_proj, self.k_proj)
        out = F.scaled_dot_product_attention(heads(q_proj(x)), heads(k_proj(x)), heads(self.v_proj(x)))
        return self.o_proj(out.transpose(1, 2).reshape(b, n, c))


class ClassTokenOriginal(nn.Module):
    """Tokens of 8 features made 16 wide, a class token and a position table of 5 rows added in the
    root's own code, one tanh block, a norm, and a head reading the class token."""

    width, tokens = 16, 4

    def __init__(self) -> None:
        super().__init__()
        d, n = self.width, self.tokens
        self.patch = nn.Linear(8, d)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, n + 1, d))
        self.block, self.norm, self.head = nn.Linear(d, d), nn.LayerNorm(d), nn.Linear(d, 3)

    def features(self, x):
        x = torch.cat([self.cls.expand(len(x), -1, -1), self.patch(x)], 1) + self.pos
        return self.norm(x + torch.tanh(self.block(x)))

    def forward(self, x):
        return self.head(self.features(x)[:, 0])


class WindowsAsDims(nn.Module):
    """A window attention of 16 features in 2 heads on a channels-last map ``(B, 8, 8, C)`` cut into
    4x4 windows kept as dims: the fused ``qkv`` returns ``(B, nh, nw, 4, 4, 3C)``, rows laid out
    ``(3, heads, head_dim)`` (timm's ``LocallyGroupedAttn``); a norm before it, a residual around."""

    dim, heads, window = 16, 2, 4

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.qkv, self.proj = nn.LayerNorm(self.dim), nn.Linear(self.dim, 3 * self.dim), nn.Linear(self.dim, self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws, nh, nw, hd = self.window, h // self.window, w // self.window, c // self.heads
        windows = self.norm(x).reshape(b, nh, ws, nw, ws, c).transpose(2, 3)
        q, k, v = self.qkv(windows).reshape(b, nh * nw, ws * ws, 3, self.heads, hd).permute(3, 0, 1, 4, 2, 5)
        y = attention(q, k, v, hd ** -0.5).transpose(2, 3).reshape(b, nh, nw, ws, ws, c).transpose(2, 3)
        return x + self.proj(y.reshape(b, h, w, c))


class WindowsInBatch(WindowsAsDims):
    """:class:`WindowsAsDims` written another way: the ``qkv`` rows laid out per head ``(heads, 3,
    head_dim)``, run on the windows folded into the batch ``(B*nW, 16, C)``, or (``on_map``) on the
    map before it is cut into windows."""

    def __init__(self, on_map: bool = False) -> None:
        super().__init__()
        self.on_map = on_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws, hd = self.window, c // self.heads

        def windows(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, h // ws, ws, w // ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, t.shape[-1])

        qkv = windows(self.qkv(self.norm(x))) if self.on_map else self.qkv(windows(self.norm(x)))
        q, k, v = qkv.reshape(-1, ws * ws, self.heads, 3, hd).permute(3, 0, 2, 1, 4)
        y = attention(q, k, v, hd ** -0.5).transpose(1, 2).reshape(b, h // ws, w // ws, ws, ws, c)
        return x + self.proj(y.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c))


def channels_last_maps(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 8, 8, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class PosConv(nn.Module):
    """timm's Twins position encoding: tokens ``(B, N, C)`` back to the map, a depthwise conv inside
    a Sequential, the residual added here."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        feat = x.transpose(1, 2).reshape(b, c, *size)
        return (self.proj(feat) + feat).flatten(2).transpose(1, 2)


class TokensWithPosConv(nn.Module):
    """A map of 8 channels as tokens, a linear, :class:`PosConv` (held in a ``ModuleList``), a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.pos_block = nn.ModuleList([PosConv()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        return self.blocks[1](self.pos_block[0](self.blocks[0](x.flatten(2).transpose(1, 2)), size))


class ChannelsLastPeg(nn.Module):
    """A position encoding generator of its own on a channels-last map, owning its depthwise kernel:
    ``x + dwconv(x)``; ``residual=False``: ``dwconv(x)`` alone."""

    def __init__(self, dim: int = 8, residual: bool = True) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(dim, 1, 3, 3)), nn.Parameter(torch.zeros(dim))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x.permute(0, 3, 1, 2), self.weight, self.bias, padding=1, groups=x.shape[-1]).permute(0, 2, 3, 1)
        return x + y if self.residual else y


class ChannelsLastPegNet(nn.Module):
    """:class:`TokensWithPosConv` on the channels-last map, with :class:`ChannelsLastPeg` between."""

    def __init__(self, residual: bool = True) -> None:
        super().__init__()
        self.local, self.peg, self.glob = nn.Linear(8, 8), ChannelsLastPeg(residual=residual), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.glob(self.peg(self.local(x.permute(0, 2, 3, 1)))).flatten(1, 2)


class BareConvPegNet(nn.Module):
    """:class:`TokensWithPosConv` with a bare depthwise ``nn.Conv2d`` whose caller adds the residual
    (``residual=False``: forgets it)."""

    def __init__(self, residual: bool = True) -> None:
        super().__init__()
        self.local, self.peg, self.glob = nn.Linear(8, 8), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Linear(8, 8)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.local(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        y = self.peg(feat) + feat if self.residual else self.peg(feat)
        return self.glob(y.flatten(2).transpose(1, 2))


class Merge(nn.Module):
    """DLA's root: the branches (given in a list) joined along the channels, a 1x1 conv, a norm
    and a ReLU module."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(2 * dim, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU()

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return self.relu(self.bn(self.conv(torch.cat(parts, 1))))


class Aggregation(nn.Module):
    """A DLA level as timm writes it: two conv branches, one after the other, and a :class:`Merge`
    of both, whose result is the level's."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.tree1 = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim))
        self.tree2 = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim))
        self.root = Merge(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tree1(x)
        return self.root([self.tree2(a), a])


class AggregationNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.level, self.head = nn.Conv2d(8, 8, 1), Aggregation(), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.level(self.stem(x)))


class Node(nn.Module):
    """The same level as a port writes it: the branches joined (with any extra maps) and merged by
    a conv-norm ``Sequential`` in the node's own code; ``swapped``: joined in the other order."""

    def __init__(self, dim: int = 8, swapped: bool = False) -> None:
        super().__init__()
        self.left = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim))
        self.right = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim))
        self.merge = nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.swapped = swapped

    def forward(self, x: torch.Tensor, extras: list[torch.Tensor]) -> torch.Tensor:
        a = self.left(x)
        b = self.right(a)
        return F.relu(self.merge(torch.cat([a, b] if self.swapped else [b, a], 1)))


class Tree(nn.Module):
    """A port's tree of one level: it calls its :class:`Node` on its input and returns its result."""

    def __init__(self, swapped: bool = False) -> None:
        super().__init__()
        self.node = Node(swapped=swapped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.node(x, [])


class TreeNet(nn.Module):
    def __init__(self, swapped: bool = False) -> None:
        super().__init__()
        self.stem, self.tree, self.head = nn.Conv2d(8, 8, 1), Tree(swapped), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tree(self.stem(x)))


class Pooling(nn.Module):
    """timm's PoolFormer token mixer: an ``nn.AvgPool2d`` inside, its input subtracted here."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


class PoolingBlock(nn.Module):
    """A PoolFormer block on a map: ``x + mixer(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.norm1, self.token_mixer, self.norm2 = nn.GroupNorm(1, dim), Pooling(), nn.GroupNorm(1, dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.GELU(), nn.Conv2d(2 * dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PoolMix(nn.Module):
    """A port's pooling mixer on tokens ``(B, N, C)``: back to the map, pooled, its input subtracted
    (``subtract=False``: left out)."""

    def __init__(self, subtract: bool = True) -> None:
        super().__init__()
        self.subtract = subtract

    def forward(self, t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = t.shape
        image = t.transpose(1, 2).reshape(b, c, *size)
        pooled = F.avg_pool2d(image, 3, 1, 1, count_include_pad=False)
        return (pooled - image if self.subtract else pooled).flatten(2).transpose(1, 2)


class PoolOnly(PoolMix):
    """The pooling alone (its caller subtracts)."""

    def __init__(self) -> None:
        super().__init__(subtract=False)


class TokenPoolBlock(nn.Module):
    """:class:`PoolingBlock` on tokens, with the port's own mixer; ``caller_subtracts``: the mixer
    is :class:`PoolOnly` and the block subtracts its input itself."""

    def __init__(self, dim: int = 8, subtract: bool = True, caller_subtracts: bool = False) -> None:
        super().__init__()
        self.n1, self.n2 = nn.GroupNorm(1, dim), nn.GroupNorm(1, dim)
        self.mix = PoolOnly() if caller_subtracts else PoolMix(subtract)
        self.up, self.down = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.caller_subtracts = caller_subtracts

    def norm(self, norm: nn.GroupNorm, t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = t.shape
        return norm(t.transpose(1, 2).reshape(b, c, *size)).flatten(2).transpose(1, 2)

    def forward(self, t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = self.norm(self.n1, t, size)
        t = t + (self.mix(y, size) - y if self.caller_subtracts else self.mix(y, size))
        return t + self.down(F.gelu(self.up(self.norm(self.n2, t, size))))


class PoolingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block = nn.Conv2d(8, 8, 1), PoolingBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))


class TokenPoolNet(nn.Module):
    def __init__(self, **block: bool) -> None:
        super().__init__()
        self.patch, self.block = nn.Conv2d(8, 8, 1), TokenPoolBlock(**block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x)
        b, c, h, w = x.shape
        return self.block(x.flatten(2).transpose(1, 2), (h, w)).transpose(1, 2).reshape(b, c, h, w)


class ChunkedGate(nn.Module):
    """gMLP's spatial gating unit as timm writes it: one input, cut in halves ``u, v``; ``v`` normed
    and mixed across the tokens, then ``u * v`` (``swapped``: the halves in each other's roles)."""

    def __init__(self, dim: int = 16, tokens: int = 5, eps: float = 1e-5, swapped: bool = False) -> None:
        super().__init__()
        self.norm, self.proj = nn.LayerNorm(dim // 2, eps=eps), nn.Linear(tokens, tokens)
        self.swapped = swapped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = x.chunk(2, dim=-1)[::-1] if self.swapped else x.chunk(2, dim=-1)
        return u * self.proj(self.norm(v).transpose(-1, -2)).transpose(-1, -2)


class HalvesGate(nn.Module):
    """The same unit given ``u`` and ``v`` apart, its tensors its own; ``eps``: its norm's."""

    def __init__(self, dim: int = 16, tokens: int = 5, eps: float = 1e-5) -> None:
        super().__init__()
        self.ln_w, self.ln_b = nn.Parameter(torch.ones(dim // 2)), nn.Parameter(torch.zeros(dim // 2))
        self.spatial, self.spatial_b = nn.Parameter(torch.randn(tokens, tokens)), nn.Parameter(torch.zeros(tokens))
        self.eps = eps

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        v = F.layer_norm(v, v.shape[-1:], self.ln_w, self.ln_b, self.eps)
        return u * F.linear(v.transpose(1, 2), self.spatial, self.spatial_b).transpose(1, 2)


class ChunkedGMlp(nn.Module):
    """A gMLP block on tokens ``(B, 5, 16)``: one projection to both halves, a GELU, the gate, back."""

    def __init__(self, dim: int = 16, eps: float = 1e-5) -> None:
        super().__init__()
        self.fc1, self.gate, self.fc2 = nn.Linear(dim, 2 * dim), ChunkedGate(2 * dim, eps=eps), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.gate(F.gelu(self.fc1(x))))


class HalvesGMlp(nn.Module):
    """The same block projecting ``u`` and ``v`` apart (a GELU on each) and gating them."""

    def __init__(self, dim: int = 16, eps: float = 1e-5) -> None:
        super().__init__()
        self.to_u, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.gate, self.out = HalvesGate(2 * dim, eps=eps), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(self.gate(F.gelu(self.to_u(x)), F.gelu(self.to_v(x))))


class PaddedConv(nn.Module):
    """A 3x3 conv padded by hand: ``F.pad``, then an unpadded conv child (TensorFlow "SAME" written
    as a wrapper)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (1, 1, 1, 1)))


class PaddedStem(nn.Module):
    """Padded convs around a plain BatchNorm, the GELU applied in ``forward`` (``act=False``: left out)."""

    def __init__(self, dim: int = 8, act: bool = True) -> None:
        super().__init__()
        self.c1, self.bn, self.c2 = PaddedConv(3, dim), nn.BatchNorm2d(dim), PaddedConv(dim, dim)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.c1(x))
        return self.c2(F.gelu(y) if self.act else y)


class NormActStem(nn.Module):
    """The same stem with convs padding inside and the GELU inside the norm (its ``act`` child)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(3, dim, 3, padding=1), NormAct(dim, nn.GELU())
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.norm1(self.conv1(x)))


class FoldedConvRelu(nn.Module):
    """A 1x1 conv whose batch norm is folded into ``x * scale + shift`` of its own, then a ReLU
    (``relu=False``: left out): the original's conv, norm and ReLU in one module without a twin."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.scale, self.shift = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))
        self.relu = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x) * self.scale[:, None, None] + self.shift[:, None, None]
        return torch.relu(y) if self.relu else y


class SineCode(nn.Module):
    """A position encoding computed from a padding mask, without tensors: ``(B, H, W, 2 * dims)``."""

    def __init__(self, dims: int = 4, normalize: bool = True) -> None:
        super().__init__()
        self.dims, self.normalize = dims, normalize

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        y = mask.double().cumsum(1)
        if self.normalize:
            y = y / y[:, -1:] * 2 * torch.pi
        freq = 100.0 ** (torch.arange(self.dims, dtype=torch.float64) / self.dims)
        return torch.cat([(y[..., None] / freq).sin(), (y[..., None] / freq).cos()], -1)


class SineAfterProjection(nn.Module):
    """Projects the maps, then encodes the mask's positions and adds them (channels first)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.code, self.head = nn.Conv2d(8, 8, 1), SineCode(), nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        f = self.proj(x)
        return self.head(f + self.code(mask).permute(0, 3, 1, 2))


class SineBeforeProjection(nn.Module):
    """The same, the positions encoded first, added channels last."""

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.pos, self.input_proj, self.out = SineCode(normalize=normalize), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pos = self.pos(mask)
        f = self.input_proj(x).permute(0, 2, 3, 1)
        return self.out((f + pos).permute(0, 3, 1, 2))


class Mixer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm, self.lin = nn.LayerNorm(dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(F.gelu(self.norm(x)))


class SpreadExchange(nn.Module):
    """Tokens projected to another width, mixed with a residual add, projected back: the steps
    are the root's children, the add the root's code."""

    def __init__(self) -> None:
        super().__init__()
        self.pre, self.down, self.mix, self.up = nn.Linear(16, 16), nn.Linear(16, 8), Mixer(8), nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.down(self.pre(x))
        return self.up(c + self.mix(c))


class Exchange(nn.Module):
    def __init__(self, residual: bool = True) -> None:
        super().__init__()
        self.go, self.mixer, self.back = nn.Linear(16, 8), Mixer(8), nn.Linear(8, 16)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.go(x)
        a = self.mixer(c)
        return self.back(c + a if self.residual else a)


class OneExchange(nn.Module):
    """:class:`SpreadExchange` with its steps and its add in one module of its own."""

    def __init__(self, residual: bool = True) -> None:
        super().__init__()
        self.first, self.exchange = nn.Linear(16, 16), Exchange(residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.exchange(self.first(x))


class TableInRoot(nn.Module):
    """Tokens embedded, a class token joined, a position table added: by the root's code; then a
    second branch of the tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.side, self.head = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.cls_token, self.pos_embed = nn.Parameter(torch.zeros(1, 1, 16)), nn.Parameter(torch.zeros(1, 6, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1) + self.pos_embed
        return self.head(t)[:, 1:] + self.side(x)


class TableBranch(nn.Module):
    def __init__(self, shift: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 16)
        self.cls, self.pos = nn.Parameter(torch.zeros(1, 1, 16)), nn.Parameter(torch.zeros(1, 6, 16))
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.lin(x)], 1)
        pos = torch.cat([self.pos[:, :1], self.pos[:, 2:], self.pos[:, -1:]], 1) if self.shift else self.pos
        return t + pos


class TableInBranch(nn.Module):
    """:class:`TableInRoot` with the embedding, the token and the table in a branch of its own."""

    def __init__(self, shift: bool = False) -> None:
        super().__init__()
        self.branch, self.other, self.out = TableBranch(shift), nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.branch(x)
        u = self.other(x)
        return self.out(t)[:, 1:] + u


class PatchProj(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ResizedInRoot(nn.Module):
    """The image resized (bicubic) by the root's code, then cut into patches and projected."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed, self.head = PatchProj(), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(4, 4), mode="bicubic", align_corners=False)
        return self.head(self.patch_embed(x))


class ResizingPatches(nn.Module):
    def __init__(self, mode: str = "bicubic") -> None:
        super().__init__()
        self.conv, self.mode = nn.Conv2d(3, 8, 2, stride=2), mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(4, 4), mode=self.mode, align_corners=False)
        return self.conv(x).flatten(2).transpose(1, 2)


class ResizedInEmbedding(nn.Module):
    """:class:`ResizedInRoot` with the resize in the patch embedding's own code."""

    def __init__(self, mode: str = "bicubic") -> None:
        super().__init__()
        self.embed, self.classifier = ResizingPatches(mode), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class PerGroupConv(nn.Module):
    """A grouped 3x3 conv written as one ``nn.Conv2d`` per group on the input's channel chunks,
    the groups' outputs joined after (``reverse``: joined last group first)."""

    def __init__(self, channels: int, groups: int, reverse: bool = False) -> None:
        super().__init__()
        self.parts = nn.ModuleList([nn.Conv2d(channels // groups, channels // groups, 3, padding=1, bias=False)
                                    for _ in range(groups)])
        self.reverse = reverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [part(chunk) for part, chunk in zip(self.parts, x.chunk(len(self.parts), 1))]
        return torch.cat(ys[::-1] if self.reverse else ys, 1)


class GroupedConvNet(nn.Module):
    """A 1x1 stem, a grouped 3x3 conv (``per_group``: written per group), a 1x1 head."""

    def __init__(self, channels: int = 16, groups: int = 4, per_group: bool = False) -> None:
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, channels, 1), nn.Conv2d(channels, 4, 1)
        self.gconv = PerGroupConv(channels, groups) if per_group else \
            nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.gconv(torch.relu(self.stem(x)))))


# --- an HRNet port: residual units, then a fusion module of its own keyed by (source, target) path,
# upsampling functionally in its code, against timm's HighResolutionNet (fuse_layers, then fuse_act)

HR_WIDTHS = (8, 16, 32, 64)


def hrnet_original() -> nn.Module:
    from timm.models.hrnet import HighResolutionNet

    def stage(n: int) -> dict:
        return dict(num_modules=1, num_branches=n, block_type="BASIC", num_blocks=(1,) * n,
                    num_channels=HR_WIDTHS[:n], fuse_method="SUM")
    stage1 = dict(num_modules=1, num_branches=1, block_type="BOTTLENECK", num_blocks=(1,), num_channels=(8,),
                  fuse_method="SUM")
    return HighResolutionNet(dict(stem_width=16, stage1=stage1, stage2=stage(2), stage3=stage(3), stage4=stage(4)),
                             head="")


class HrConvNorm(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, s: int = 1, relu: bool = True) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class HrBottleneck(nn.Module):
    def __init__(self, cin: int, c: int) -> None:
        super().__init__()
        self.a, self.b = HrConvNorm(cin, c, 1), HrConvNorm(c, c, 3)
        self.c, self.skip = HrConvNorm(c, 4 * c, 1, relu=False), HrConvNorm(cin, 4 * c, 1, relu=False)

    def forward(self, x):
        return F.relu(self.c(self.b(self.a(x))) + self.skip(x))


class HrUnit(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = HrConvNorm(c, c, 3), HrConvNorm(c, c, 3, relu=False)

    def forward(self, x):
        return F.relu(x + self.b(self.a(x)))


class HrFusion(nn.Module):
    """out_i = relu(sum_j path_ji(x_j)): a 1x1 conv and nearest upsampling from coarser maps,
    strided 3x3 convs from finer ones."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.final_relu, self.paths = n, True, nn.ModuleDict()
        w = HR_WIDTHS
        for i in range(n):
            for j in range(n):
                if j > i:
                    self.paths[f"{j}to{i}"] = HrConvNorm(w[j], w[i], 1, relu=False)
                elif j < i:
                    steps = [HrConvNorm(w[j], w[j], 3, 2) for _ in range(i - j - 1)]
                    self.paths[f"{j}to{i}"] = nn.Sequential(*steps, HrConvNorm(w[j], w[i], 3, 2, relu=False))

    def forward(self, xs):
        outs = []
        for i in range(self.n):
            y = xs[i]
            for j in (j for j in range(self.n) if j != i):
                z = self.paths[f"{j}to{i}"](xs[j])
                y = y + (F.interpolate(z, scale_factor=2 ** (j - i), mode="nearest") if j > i else z)
            outs.append(F.relu(y) if self.final_relu else y)
        return outs


class HrStage(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.units, self.fusion = nn.ModuleList([HrUnit(HR_WIDTHS[i]) for i in range(n)]), HrFusion(n)

    def forward(self, xs):
        return self.fusion([u(x) for u, x in zip(self.units, xs)])


class HrPort(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        w = HR_WIDTHS
        self.stem1, self.stem2, self.layer1 = HrConvNorm(3, 16, 3, 2), HrConvNorm(16, 64, 3, 2), HrBottleneck(64, 8)
        self.split0 = HrConvNorm(32, w[0], 3)
        self.grow = nn.ModuleList([HrConvNorm(32, w[1], 3, 2), HrConvNorm(w[1], w[2], 3, 2), HrConvNorm(w[2], w[3], 3, 2)])
        self.stages = nn.ModuleList([HrStage(n) for n in (2, 3, 4)])

    def forward(self, img):
        x = self.layer1(self.stem2(self.stem1(img)))
        xs = self.stages[0]([self.split0(x), self.grow[0](x)])
        xs = self.stages[1](xs + [self.grow[1](xs[-1])])
        return self.stages[2](xs + [self.grow[2](xs[-1])])


class FoldedNorm(nn.Module):
    """An inference-time batch norm stored folded into ``x * scale + shift`` per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale, self.shift = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale[:, None, None] + self.shift[:, None, None]


class InvertedResidual(nn.Module):
    """Expand, depthwise and project convs, each followed by a batch norm (``norm``), and a shortcut."""

    def __init__(self, channels: int = 8, norm: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        mid = channels * 2
        self.expand, self.n1 = nn.Conv2d(channels, mid, 1, bias=False), norm(mid)
        self.dw, self.n2 = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False), norm(mid)
        self.project, self.n3 = nn.Conv2d(mid, channels, 1, bias=False), norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.n1(self.expand(x)))
        return x + self.n3(self.project(F.silu(self.n2(self.dw(y)))))


class FoldedInvertedResidual(InvertedResidual):
    """The same with its norms folded (:class:`FoldedNorm`); ``use_shortcut = False`` drops the shortcut."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__(channels, FoldedNorm)
        self.use_shortcut = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.n1(self.expand(x)))
        y = self.n3(self.project(F.silu(self.n2(self.dw(y)))))
        return x + y if self.use_shortcut else y


class InvertedResidualNet(nn.Module):
    """A stem conv, one inverted residual (``block``: :class:`InvertedResidual` or its folded form)
    and a head conv."""

    def __init__(self, block: type[nn.Module] = InvertedResidual) -> None:
        super().__init__()
        self.stem, self.block, self.head = nn.Conv2d(8, 8, 3, padding=1), block(), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))



class ConvMerge(nn.Module):
    """A 2x2 patch merge as a stride-2 conv, giving channels-last maps."""

    def __init__(self, cin: int = 8, cout: int = 16) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class LinearMerge(nn.Module):
    """The same as a linear on patch vectors gathered by reshape and permute; ``order`` is the
    permute, ``(0, 2, 4, 1, 3, 5)`` laying each patch out as a conv kernel, ``(C, dh, dw)``."""

    def __init__(self, cin: int = 8, cout: int = 16) -> None:
        super().__init__()
        self.lin, self.order = nn.Linear(4 * cin, cout), (0, 2, 4, 1, 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        return self.lin(x.reshape(B, C, H // 2, 2, W // 2, 2).permute(*self.order).reshape(B, H // 2, W // 2, 4 * C))


class MergeNet(nn.Module):
    """A stem conv, a 2x2 patch merge (``merge``: :class:`ConvMerge` or :class:`LinearMerge`) and a
    channels-last head, on ``(B, 8, H, W)``."""

    def __init__(self, merge: type[nn.Module] = ConvMerge) -> None:
        super().__init__()
        self.stem, self.merge, self.head = nn.Conv2d(8, 8, 3, padding=1), merge(), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.merge(self.stem(x)))
