"""An untwinned container whose own code runs before the first failing call (an encoder adding a
position table before its layers) is blamed only when it was handed what the reference computes:
handed a value the reference never computes (the class token joined after the patches), the error
was made before it, by the code around it."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import transferred
from port_toys import images, randomized

C, TOKENS = 8, 1 + 9  # 6x6 images in 2x2 patches, and a class token


class _Encoder(nn.Module):
    """torchvision's layout: the position table is the encoder's, added before its layers."""

    def __init__(self) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.zeros(1, TOKENS, C))
        self.layers = nn.Sequential(nn.Linear(C, C), nn.GELU(), nn.Linear(C, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x + self.pos_embedding)


class Port(nn.Module):
    def __init__(self, class_token_last: bool = False) -> None:
        super().__init__()
        self.class_token_last = class_token_last
        self.conv_proj = nn.Conv2d(3, C, 2, 2)
        self.class_token = nn.Parameter(torch.zeros(1, 1, C))
        self.encoder = _Encoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)                  # (B, N, C)
        cls = self.class_token.expand(x.shape[0], -1, -1)                 # (B, 1, C)
        x = torch.cat([x, cls] if self.class_token_last else [cls, x], 1)  # (B, 1 + N, C)
        return self.encoder(x)


class Original(nn.Module):
    """timm's layout: the model's own code joins the class token and adds the position table."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, C, 2, 2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_embed = nn.Parameter(torch.zeros(1, TOKENS, C))
        self.blocks = nn.Sequential(nn.Linear(C, C), nn.GELU(), nn.Linear(C, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.blocks(x)


def test_a_class_token_joined_last_is_blamed_on_the_code_joining_it_not_on_the_encoder_after_it():
    candidate, reference, weights = transferred(randomized(Port(), 1), randomized(Original(), 2), images())
    candidate.class_token_last = True
    report = harness.compare(candidate, reference, images(), weights=weights)
    assert (report.passed, report.culprit) == (False, "<root>"), report.format()


def test_a_position_table_added_wrong_in_the_encoder_is_blamed_on_the_encoder():
    candidate, reference, weights = transferred(randomized(Port(), 1), randomized(Original(), 2), images())
    with torch.no_grad():
        candidate.encoder.pos_embedding[0, 3, 2] += 1.0
    report = harness.compare(candidate, reference, images(), weights=weights)
    assert (report.passed, report.culprit) == (False, "encoder"), report.format()
