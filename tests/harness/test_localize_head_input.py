"""A root that skips its final norm hands its pooling head un-normed state. The head, re-run on its
twin's inputs, gives its twin's output: it received the error, and so did every call inside it,
twinned or not (an ``nn.MultiheadAttention`` whose fused projection has no one twin). None of them
is blamed; the root, whose own code left the norm out, is."""

from __future__ import annotations

import torch
from torch import nn

from helpers import compare_port

D, T = 8, 5


class AttentionPool(nn.Module):
    """The original's pooling head: a latent query, its own q / kv / proj layers."""

    def __init__(self) -> None:
        super().__init__()
        self.latent = nn.Parameter(torch.randn(1, 1, D))
        self.q, self.kv, self.proj = nn.Linear(D, D), nn.Linear(D, 2 * D), nn.Linear(D, D)
        self.norm, self.mlp = nn.LayerNorm(D), nn.Linear(D, D)

    def forward(self, x):
        q = self.q(self.latent.expand(len(x), -1, -1))
        k, v = self.kv(x).chunk(2, -1)
        out = self.proj((q @ k.transpose(-1, -2) / D ** 0.5).softmax(-1) @ v)
        return (out + self.mlp(self.norm(out)))[:, 0]


class Original(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.block, self.norm, self.pool = nn.Linear(4, D), nn.Linear(D, D), nn.LayerNorm(D), AttentionPool()

    def forward(self, x):
        x = self.embed(x)
        return self.pool(self.norm(x + torch.tanh(self.block(x))))


class PoolingHead(nn.Module):
    """The port's head: torch's ``nn.MultiheadAttention`` with its fused in-projection."""

    def __init__(self) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, D))
        self.attention = nn.MultiheadAttention(D, 1, batch_first=True)
        self.layernorm, self.mlp = nn.LayerNorm(D), nn.Linear(D, D)

    def forward(self, x):
        out = self.attention(self.probe.expand(len(x), -1, -1), x, x, need_weights=False)[0]
        return (out + self.mlp(self.layernorm(out)))[:, 0]


class Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.layer = nn.Linear(4, D), nn.Linear(D, D)
        self.post_norm, self.head = nn.LayerNorm(D), PoolingHead()
        self.skip_norm = False

    def forward(self, x):
        x = self.embed(x)
        x = x + torch.tanh(self.layer(x))
        return self.head(x if self.skip_norm else self.post_norm(x))


def test_root_that_feeds_its_head_un_normed_state_is_the_culprit_not_the_heads_attention():
    torch.manual_seed(0)
    x = torch.randn(2, T, 4, dtype=torch.float64)
    report = compare_port(Port().double().eval(), Original().double().eval(), x,
                          lambda port: setattr(port, "skip_norm", True))
    assert not report.passed
    assert report.culprit == "<root>", \
        f"culprit {report.culprit}, expected <root> (the head computes right on the reference's input)\n{report.format()}"
