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


def drop_residual(block: Block) -> None:
    """Monkeypatch one block instance so that it forgets its residual connection."""
    block.forward = lambda x: block.fc2(block.act(block.fc1(block.norm(x))))  # type: ignore[method-assign]
