"""A later origin of the error, a block whose input carries the error of the blocks before it, is
diagnosed on its twin's recorded inputs, brought into its own layout (tokens against an NCHW map)
by the layout closest to what it received: its own wrong inputs would make its first op (a norm
written out by hand) differ and hide what it lacks itself."""

import torch
from torch import nn

from helpers import compare_port, findings_text
from port_toys import randomized

CHANNELS = 6


class MapBlock(nn.Module):
    """``x + gamma * proj(norm(x))`` on an NCHW map, the norm a one-group GroupNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.proj = nn.GroupNorm(1, CHANNELS), nn.Conv2d(CHANNELS, CHANNELS, 1)
        self.gamma = nn.Parameter(torch.ones(CHANNELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma[:, None, None] * self.proj(self.norm(x))


class TokenBlock(nn.Module):
    """``MapBlock`` on ``(B, N, C)`` tokens, its norm written out; ``scaled=False`` drops the ``gamma``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(CHANNELS)), nn.Parameter(torch.zeros(CHANNELS))
        self.proj, self.gamma = nn.Linear(CHANNELS, CHANNELS), nn.Parameter(torch.ones(CHANNELS))
        self.scaled = True

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        mean = t.mean((1, 2), keepdim=True)
        var = (t - mean).pow(2).mean((1, 2), keepdim=True)
        y = self.proj((t - mean) / torch.sqrt(var + 1e-5) * self.weight + self.bias)
        return t + (self.gamma * y if self.scaled else y)


class MapNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.blocks = nn.Conv2d(3, CHANNELS, 1), nn.Sequential(MapBlock(), MapBlock())
        self.head = nn.Linear(CHANNELS, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class TokenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.blocks = nn.Conv2d(3, CHANNELS, 1), nn.Sequential(TokenBlock(), TokenBlock())
        self.head = nn.Linear(CHANNELS, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x).flatten(2).transpose(1, 2)).mean(1))


def _unscaled(model: nn.Module) -> None:
    for block in model.blocks:
        block.scaled = False


def test_a_later_origin_is_diagnosed_on_its_twins_inputs_in_its_own_layout() -> None:
    x = torch.randn(1, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    report = compare_port(TokenNet().double().eval(), randomized(MapNet(), seed=4), x, _unscaled)
    later = [f for f in report.diagnosis if f["module"].startswith("blocks.1")]
    assert "blocks.1" in report.introduced and later and later[0]["kind"] == "missing_op" \
        and later[0]["op"] == "mul", \
        f"expected blocks.1 diagnosed with its own missing mul by gamma, got introduced {report.introduced}:\n" \
        f"{findings_text(report.diagnosis)}"
