"""An operation left out where every call passes its value on unchanged: a residual layer that
lost its add, a Dropout left in training at the end of a block, a residual dropped in summary mode.

The models are written twice, as a port and its original would be: other names, other module
trees, the same computation."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import harness
from helpers import transferred

D = 16


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        return self.proj(torch.softmax(q @ k.transpose(-1, -2) / 4, -1) @ v)


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.drop1, self.fc2, self.drop2 = (
            nn.Linear(D, 2 * D), nn.GELU(), nn.Dropout(0.0), nn.Linear(2 * D, D), nn.Dropout(0.0))

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """The original: both residual adds in the block's own code."""

    def __init__(self) -> None:
        super().__init__()
        self.attn, self.mlp = Attention(), Mlp()

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.mlp(x)


class Original(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.blocks, self.head = nn.Linear(8, D), nn.Sequential(Block(), Block()), nn.Linear(D, 4)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)))


class Residual(nn.Module):
    """The port's residual layer: one module per branch, the add in the layer."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        return x + self.module(x)


def _port_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Dropout(0.0), nn.Linear(2 * D, D), nn.Dropout(0.0))


class Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, D)
        self.layers = nn.ModuleList([Residual(Attention()), Residual(_port_mlp()),
                                     Residual(Attention()), Residual(_port_mlp())])
        self.out = nn.Linear(D, 4)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.out(x)


class HiddenStates(Port):
    """The port returning what a transformers model does: hidden states and a pooled value."""

    def forward(self, x):
        hidden = super().forward(x)
        return {"last_hidden_state": hidden, "pooled": hidden.mean(1)}


def _lose_add(layer: nn.Module) -> None:
    layer.forward = types.MethodType(lambda self, h: self.module(h), layer)


@pytest.fixture
def ported():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    port, original = Port().double().eval(), Original().double().eval()
    _, _, weights = transferred(port, original, x)
    assert harness.compare(port, original, x, weights=weights).passed, "the correct port must pass first"
    return port, original, x, weights


def _why(report) -> str:
    return report.diagnosis[0]["text"] if report.diagnosis else "(no why)"


def test_residual_layer_that_lost_its_add_is_the_culprit(ported):
    port, original, x, weights = ported
    _lose_add(port.layers[2])
    report = harness.compare(port, original, x, weights=weights)
    assert (report.passed, report.culprit) == (False, "layers.2"), \
        f"culprit {report.culprit}, expected layers.2 (its forward returns module(h), not h + module(h))\n{report.format()}"


def test_why_of_a_residual_layer_that_lost_its_add_names_the_add(ported):
    port, original, x, weights = ported
    _lose_add(port.layers[2])
    why = _why(harness.compare(port, original, x, weights=weights))
    assert why.startswith("layers.2: add missing") and "residual" in why, f"why: {why}"


def test_residual_layer_under_containers_without_twins_is_found(ported):
    port, original, x, weights = ported
    hidden = HiddenStates().double().eval()
    hidden.load_state_dict(port.state_dict())
    _lose_add(hidden.layers[2])
    report = harness.compare(hidden, original, x, weights=weights, candidate_outputs=lambda out: out["last_hidden_state"])
    assert report.culprit == "layers.2", f"culprit {report.culprit}, expected layers.2\n{report.format()}"


def test_trailing_dropout_left_in_training_is_the_culprit(ported):
    port, original, x, weights = ported
    port.layers[3].module[4].p = 0.5
    port.layers[3].module[4].train()
    report = harness.compare(port, original, x, weights=weights)
    assert report.culprit == "layers.3.module.4", \
        f"culprit {report.culprit}, expected the Dropout left in training (layers.3.module.4)\n{report.format()}"


class PlainBlock(nn.Module):
    """A port block whose attention sits in a one-child Sequential; its own code does the adds."""

    def __init__(self) -> None:
        super().__init__()
        self.attn_branch, self.mlp = nn.Sequential(Attention()), _port_mlp()

    def forward(self, x):
        x = x + self.attn_branch(x)
        return x + self.mlp(x)


class SequentialPort(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.blocks, self.out = nn.Linear(8, D), nn.Sequential(PlainBlock(), PlainBlock()), nn.Linear(D, 4)

    def forward(self, x):
        return self.out(self.blocks(self.stem(x)))


def test_block_that_lost_its_add_is_blamed_not_the_sequential_it_wraps():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    port, original = SequentialPort().double().eval(), Original().double().eval()
    _, _, weights = transferred(port, original, x)
    block = port.blocks[1]
    block.forward = types.MethodType(lambda self, h: (lambda y: y + self.mlp(y))(self.attn_branch(h)), block)
    report = harness.compare(port, original, x, weights=weights)
    assert report.culprit == "blocks.1", f"culprit {report.culprit}, expected blocks.1 (its own code lost the add)\n{report.format()}"


class BasicBlock(nn.Module):
    """A ResNet block that calls one ReLU module twice, as torchvision's does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)


class TwoActBlock(nn.Module):
    """The same block written with one activation module per use."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1, self.a1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.c2, self.n2, self.a2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()

    def forward(self, x):
        return self.a2(self.n2(self.c2(self.a1(self.n1(self.c1(x))))) + x)


def _net(block: type) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), block(), block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_summary_mode_blames_the_block_that_dropped_its_residual_not_its_activation():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    port, original = _net(BasicBlock).double().eval(), _net(TwoActBlock).double().eval()
    with torch.no_grad():
        for m in original.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5), m.weight.normal_(1, 0.1)
    _, _, weights = transferred(port, original, x)
    block = port[2]
    block.forward = types.MethodType(lambda self, h: self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(h)))))), block)
    report = harness.compare(port, original, x, weights=weights, mode="summary")
    assert report.culprit == "2", f"culprit {report.culprit}, expected the block 2 (its forward dropped + x)\n{report.format()}"


class TokenOriginal(nn.Module):
    """Class token and position table in the model's own code, as timm writes a ViT."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Linear(8, D)
        self.cls_token, self.pos_embed = nn.Parameter(torch.randn(1, 1, D)), nn.Parameter(torch.randn(1, 6, D))
        self.blocks, self.norm, self.head = nn.Sequential(Block(), Block()), nn.LayerNorm(D), nn.Linear(D, 4)

    def forward(self, x):
        x = self.patch(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class Encoder(nn.Module):
    """The port's encoder adds the position table before its layers, as torchvision's does."""

    def __init__(self) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(1, 6, D))
        self.layers, self.ln = nn.Sequential(Block(), Block()), nn.LayerNorm(D)

    def forward(self, x):
        return self.ln(self.layers(x + self.pos_embedding))


class TokenPort(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj, self.class_token = nn.Linear(8, D), nn.Parameter(torch.randn(1, 1, D))
        self.encoder, self.heads = Encoder(), nn.Linear(D, 4)

    def forward(self, x):
        x = self.proj(x)
        return self.heads(self.encoder(torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], 1))[:, 0])


def test_encoder_that_no_longer_adds_its_position_table_is_the_culprit():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    port, original = TokenPort().double().eval(), TokenOriginal().double().eval()
    _, _, weights = transferred(port, original, x)
    port.encoder.forward = types.MethodType(lambda self, h: self.ln(self.layers(h)), port.encoder)
    report = harness.compare(port, original, x, weights=weights)
    assert report.culprit == "encoder", \
        f"culprit {report.culprit}, expected encoder (it holds the position table and hands its input on without it)\n{report.format()}"


class PostNormBlock(nn.Module):
    """The original: each branch normalized after it runs (post-norm), both adds in the block."""

    def __init__(self) -> None:
        super().__init__()
        self.attn, self.norm1, self.mlp, self.norm2 = Attention(), nn.LayerNorm(D), Mlp(), nn.LayerNorm(D)

    def forward(self, x):
        x = x + self.norm1(self.attn(x))
        return x + self.norm2(self.mlp(x))


class PostNormOriginal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.blocks, self.head = nn.Linear(8, D), nn.Sequential(PostNormBlock(), PostNormBlock()), nn.Linear(D, 4)

    def forward_features(self, x):
        return self.blocks(self.embed(x))

    def forward(self, x):
        return self.head(self.forward_features(x).mean(1))


class PostNormLayer(nn.Module):
    """The port's layer: one branch, its norm and its add."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch, self.norm, self.pre_norm = branch, nn.LayerNorm(D), False

    def forward(self, x):
        if self.pre_norm:  # the norm applied before the branch: another block
            return x + self.branch(self.norm(x))
        return x + self.norm(self.branch(x))


class PostNormPort(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, D)
        self.layers = nn.ModuleList(PostNormLayer(m) for m in (Attention(), _port_mlp(), Attention(), _port_mlp()))

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:  # no call around the layers: none of them has a twinned caller
            x = layer(x)
        return x


def test_layer_calling_its_norm_before_the_branch_is_the_culprit_when_the_root_is_not_compared():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    features = {"reference_call": lambda model, call: model.forward_features(*call.args)}
    port, original = PostNormPort().double().eval(), PostNormOriginal().double().eval()
    with torch.no_grad():
        for p in original.parameters():
            p.add_(0.1 * torch.randn_like(p))
    weights = harness.map_weights(port, original, x, **features)
    weights.transfer(original, port)
    assert harness.compare(port, original, x, weights=weights, **features).passed, "the correct port must pass first"
    port.layers[2].pre_norm = True
    report = harness.compare(port, original, x, weights=weights, **features)
    assert report.culprit == "layers.2", f"culprit {report.culprit}, expected layers.2 (pre-norm where post-norm)\n{report.format()}"


def test_why_of_a_layer_without_a_twin_compares_it_with_the_module_its_weights_come_from():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    features = {"reference_call": lambda model, call: model.forward_features(*call.args)}
    port, original = PostNormPort().double().eval(), PostNormOriginal().double().eval()
    with torch.no_grad():
        for p in original.parameters():
            p.add_(0.1 * torch.randn_like(p))
    weights = harness.map_weights(port, original, x, **features)
    weights.transfer(original, port)
    port.layers[2].pre_norm = True
    report = harness.compare(port, original, x, weights=weights, **features)
    why = _why(report)
    assert why.startswith("layers.2: layer_norm") and "missing" in why, f"why: {why}\n{report.format()}"


class TokenResidualPort(nn.Module):
    """Class token and position table in the model's own code, then residual layers of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.class_token = nn.Linear(8, D), nn.Parameter(torch.randn(1, 1, D))
        self.position = nn.Parameter(torch.randn(1, 6, D))
        self.layers = nn.ModuleList([Residual(Attention()), Residual(_port_mlp()), Residual(Attention()), Residual(_port_mlp())])
        self.ln, self.heads = nn.LayerNorm(D), nn.Linear(D, 4)
        self.add_position = True

    def forward(self, x):
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), self.proj(x)], 1)
        x = x + self.position if self.add_position else x
        for layer in self.layers:
            x = layer(x)
        return self.heads(self.ln(x)[:, 0])


def test_model_that_no_longer_adds_its_position_table_is_blamed_not_the_layer_it_feeds():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    port, original = TokenResidualPort().double().eval(), TokenOriginal().double().eval()
    _, _, weights = transferred(port, original, x)
    port.add_position = False
    report = harness.compare(port, original, x, weights=weights)
    assert report.culprit == "<root>", \
        f"culprit {report.culprit}, expected <root>, whose own code no longer adds the table\n{report.format()}"
