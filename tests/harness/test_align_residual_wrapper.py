"""A residual layer written as a wrapper module (transformers' LeViT: ``x + module(x)``) against a
block adding the residual in its own code around a pass-through call (timm's
``x + drop_path(attn(x))``, ``drop_path`` an ``Identity`` in eval): the wrapped module, not the
wrapper, is the attention's twin. The pass-through call reading the attention's output hands
nothing on; the add after it is what the next call reads."""

import torch
from torch import nn

from helpers import compare_port
from port_toys import randomized

DIM, TOKENS = 16, 6


class Mixer(nn.Module):
    """A token-wise two-layer mixer, the module both sides wrap in a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


class Residual(nn.Module):
    """The port's residual layer: ``x + module(x)`` (``residual=False``: the add left out)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module, self.residual = module, True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.module(x) if self.residual else self.module(x)


class WrappedLayers(nn.Module):
    """Two residual layers, each a wrapper around its mixer."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(Residual(Mixer()), Residual(Mixer()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Block(nn.Module):
    """The original's block: both residuals added in its own code, each after a pass-through."""

    def __init__(self) -> None:
        super().__init__()
        self.attn, self.mlp = Mixer(), Mixer()
        self.drop_path1, self.drop_path2 = nn.Identity(), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(x))
        return x + self.drop_path2(self.mlp(x))


def _report(candidate: nn.Module, reference: nn.Module, change=lambda port: None):
    x = torch.randn(2, TOKENS, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return compare_port(randomized(candidate, seed=2), randomized(reference, seed=3), x, change)


def test_residual_wrappers_against_a_block_adding_after_pass_throughs_pass():
    report = _report(WrappedLayers(), Block())
    assert report.passed, f"expected the right port to pass, got:\n{report.format()}"


def test_a_block_adding_after_pass_throughs_against_residual_wrappers_passes():
    report = _report(Block(), WrappedLayers())
    assert report.passed, f"expected the right port to pass, got:\n{report.format()}"


def test_a_wrapper_losing_its_residual_is_blamed():
    report = _report(WrappedLayers(), Block(), lambda port: setattr(port.layers[0], "residual", False))
    assert report.culprit == "layers.0", f"culprit {report.culprit!r}, expected 'layers.0':\n{report.format()}"
