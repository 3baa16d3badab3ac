"""A port may keep its class token at the end of the token sequence where the reference keeps it
first: attention does not care where a token sits, so every layer computes the same values, rolled
by one token. The rows compare through that roll (a layout adapter), so a faithful port passes and
its weight map verifies, while an error stays where it is made."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import compare_port, findings_text

C, HEADS, PATCH = 16, 2, 4


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.qkv, self.proj = nn.LayerNorm(C), nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(C), nn.Linear(C, 2 * C), nn.Linear(2 * C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        q, k, v = self.qkv(self.norm1(x)).unflatten(-1, (3, HEADS, -1)).permute(2, 0, 3, 1, 4)  # (B, heads, N, D)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class _ViT(nn.Module):
    """``class_last``: the class token joins the patches at the end and is read from there; ``read``:
    the position the head reads (a port reading a patch token reads another value)."""

    def __init__(self, class_last: bool = False, read: int | None = None) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, C, PATCH, PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.blocks = nn.Sequential(_Encoder(), _Encoder())
        self.norm, self.head = nn.LayerNorm(C), nn.Linear(C, 5)
        self.class_last = class_last
        self.read = read if read is not None else (-1 if class_last else 0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch(image).flatten(2).transpose(1, 2)  # (B, N, C)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([x, cls] if self.class_last else [cls, x], 1)
        return self.head(self.norm(self.blocks(x))[:, self.read])


def _compare(candidate: _ViT, change=lambda model: None) -> harness.Report:
    ref = _ViT().double().eval()
    harness.randomize_(ref, torch.Generator().manual_seed(0))
    image = torch.randn(2, 3, 12, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return compare_port(candidate.double().eval(), ref, image, change)


def test_a_port_keeping_its_class_token_last_passes() -> None:
    report = _compare(_ViT(class_last=True))
    assert report.passed, report.format()


def test_the_weight_map_of_a_port_keeping_its_class_token_last_verifies() -> None:
    ref = _ViT().double().eval()
    image = torch.randn(2, 3, 12, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    weights = harness.map_weights(_ViT(class_last=True).double().eval(), ref, image)
    assert weights.verified, [c["text"] for c in weights.conflicts]


def test_a_weight_error_in_a_port_keeping_its_class_token_last_blames_its_layer() -> None:
    report = _compare(_ViT(class_last=True), lambda model: model.blocks[1].fc1.weight[3, 2].add_(0.01))
    assert not report.passed and report.culprit == "blocks.1.fc1", \
        f"culprit {report.culprit!r}, expected 'blocks.1.fc1'\n{findings_text(report.diagnosis)}"


def test_a_port_reading_a_patch_token_instead_of_its_class_token_fails() -> None:
    report = _compare(_ViT(class_last=True, read=0))
    assert not report.passed, report.format()
