"""The diagnosis re-runs each twin with its own arguments: a block that also takes a mask it is
given as ``None`` (as transformers layers are called) is run with that ``None`` and the reference's
tensors, never with the reference's argument list. An origin fed other values by an error upstream
is explained by its own difference when it has one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import compare_port, findings_text

C = 8


class _Mlp(nn.Module):
    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(C, 2 * C), nn.Linear(2 * C, C)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class _Block(nn.Module):
    """``x + attention`` then ``x + mlp``; ``scale``: the attention's score scale."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj, self.mlp = nn.Linear(C, 3 * C), nn.Linear(C, C), _Mlp()
        self.scale = C ** -0.5

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        return self.proj(F.scaled_dot_product_attention(q, k, v, scale=self.scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attend(x)
        return x + self.mlp(x)


class _MaskedBlock(_Block):
    """The same block taking a mask, as a transformers layer does; the model passes None."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attend(x)
        return x + self.mlp(x)


class _Model(nn.Module):
    def __init__(self, block: type[_Block]) -> None:
        super().__init__()
        self.embed, self.blocks = nn.Linear(4, C), nn.ModuleList([block(), block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x, None) if isinstance(block, _MaskedBlock) else block(x)
        return x


def _report(change) -> harness.Report:
    reference = _Model(_Block).double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    x = torch.randn(2, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return compare_port(_Model(_MaskedBlock).double().eval(), reference, x, change)


def test_a_block_given_a_none_mask_is_diagnosed_with_its_own_arguments() -> None:
    report = _report(lambda port: setattr(port.blocks[1], "scale", 1.0))
    assert report.diagnosis and "scale 1.0 in the candidate" in report.diagnosis[0]["text"], \
        findings_text(report.diagnosis)


def test_an_origin_fed_other_values_by_an_error_upstream_names_its_own_difference() -> None:
    def two_bugs(port: nn.Module) -> None:
        port.blocks[1].scale = 1.0
        port.blocks[1].mlp.approximate = "tanh"

    report = _report(two_bugs)
    assert any(f["argument"] == "approximate" and f["module"].startswith("blocks.1.mlp") for f in report.diagnosis), \
        findings_text(report.diagnosis)
