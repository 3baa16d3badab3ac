"""Tiny models for the harness's own tests: a pre-norm MLP stack and its twins."""

from __future__ import annotations

import torch
from torch import nn

import harness


class Block(nn.Module):
    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class Net(nn.Module):
    def __init__(self, dim: int = 8, depth: int = 3, *, extra_identity: bool = False) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Block(dim) for _ in range(depth)])
        self.pre = nn.Identity() if extra_identity else None
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        if self.pre is not None:
            x = self.pre(x)
        return self.head(x.mean(1))


class RenamedNet(nn.Module):
    """Same math as Net, other module names (layers.N.ln / mlp_in / mlp_out, classifier)."""

    def __init__(self, dim: int = 8, depth: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict(dict(
            ln=nn.LayerNorm(dim, eps=1e-6), mlp_in=nn.Linear(dim, 2 * dim), gelu=nn.GELU(),
            mlp_out=nn.Linear(2 * dim, dim))) for _ in range(depth))
        self.classifier = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer["mlp_out"](layer["gelu"](layer["mlp_in"](layer["ln"](x))))
        return self.classifier(x.mean(1))


RENAME = (
    (r"^blocks\.(\d+)\.norm$", r"layers.\1.ln"),
    (r"^blocks\.(\d+)\.fc1$", r"layers.\1.mlp_in"),
    (r"^blocks\.(\d+)\.act$", r"layers.\1.gelu"),
    (r"^blocks\.(\d+)\.fc2$", r"layers.\1.mlp_out"),
    (r"^head$", "classifier"),
)


def renamed_to_net(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in ((r"^layers\.(\d+)\.ln\.", r"blocks.\1.norm."), (r"^layers\.(\d+)\.mlp_in\.", r"blocks.\1.fc1."),
                              (r"^layers\.(\d+)\.mlp_out\.", r"blocks.\1.fc2."), (r"^classifier\.", "head.")):
            import re

            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def make_inputs(g: torch.Generator) -> torch.Tensor:
    return torch.randn(2, 5, 8, generator=g)


TOY = harness.Pair(name="toy_mlp", candidate=Net, reference=Net, convert=dict, make_inputs=make_inputs)
TOY_RENAMED = harness.Pair(
    name="toy_renamed", candidate=Net, reference=RenamedNet, convert=renamed_to_net,
    make_inputs=make_inputs, rename=RENAME,
)


def _net_with_a_changed_eps() -> Net:
    model = Net()
    model.blocks[2].norm.eps = 1e-4
    return model


# A bug the CLI can build: the candidate's third block normalizes with eps 1e-4 instead of 1e-6.
TOY_EPS = harness.Pair(name="toy_eps", candidate=_net_with_a_changed_eps, reference=Net, convert=dict,
                       make_inputs=make_inputs)


def drop_residual(block: Block) -> None:
    """Monkeypatch one block instance so that it forgets its residual connection."""
    block.forward = lambda x: block.fc2(block.act(block.fc1(block.norm(x))))  # type: ignore[method-assign]


# -- a pre-norm attention block stack; switches inject the bugs the diagnosis must name -------------
class Attention(nn.Module):
    """Multi-head self-attention, written out (``fused=False``) or through the fused kernel."""

    def __init__(self, dim: int = 8, heads: int = 2, *, fused: bool = False) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused
        self.scale = (dim // heads) ** -0.5
        self.softmax_dim, self.softmax_dtype, self.transpose_heads = -1, None, True
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused:
            x = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=self.softmax_dim, dtype=self.softmax_dtype)
            x = weights.to(v.dtype) @ v
        x = x.transpose(1, 2).reshape(batch, tokens, dim) if self.transpose_heads else x.reshape(batch, tokens, dim)
        return self.proj(x)


class AttnBlock(nn.Module):
    def __init__(self, dim: int = 8, *, fused: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, fused=fused)
        self.gamma_1 = nn.Parameter(torch.ones(dim))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.gamma_2 = nn.Parameter(torch.ones(dim))
        self.layer_scale = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))
        x = x + (self.gamma_1 * a if self.layer_scale else a)
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class AttnNet(nn.Module):
    def __init__(self, dim: int = 8, depth: int = 2, *, fused: bool = False) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[AttnBlock(dim, fused=fused) for _ in range(depth)])
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x).mean(1))


# the candidate writes attention out, the reference calls the fused kernel: the same math
TOY_ATTENTION = harness.Pair(name="toy_attention", candidate=AttnNet, reference=lambda: AttnNet(fused=True),
                             convert=dict, make_inputs=make_inputs)


class _Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


class WithScripted(nn.Module):
    """A TorchScript submodule (which takes no Python hooks) between two plain ones."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.jit.script(_Inner())
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.inner(x))
