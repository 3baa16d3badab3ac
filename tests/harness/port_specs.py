"""Model specs for the command-line tests: ``tests/harness/port_specs.py:function``."""

import torch
from torch import nn

from port_toys import FusedBlock, SplitBlock, randomized


def fused():
    return FusedBlock()


def fused_wrong_eps():
    return FusedBlock(eps=1e-3)


def split():
    return randomized(SplitBlock(), 2).float()


def not_a_model():
    return "a string"


def needs_an_argument(width):
    return FusedBlock(dim=width)


def fails_to_build():
    raise RuntimeError("the checkpoint is missing")


class _DictOutput(nn.Module):
    """The fused block returning a dict of fields, as a transformers model returns a ModelOutput."""

    def __init__(self) -> None:
        super().__init__()
        self.block = FusedBlock()

    def forward(self, x):
        y = self.block(x)
        return {"hidden": y, "pooled": y.mean(1)}


def fused_dict():
    return _DictOutput()


class _ScaledResidual(nn.Module):
    """A residual block after a ReLU stem, its branch scaled by a layer scale at zero, as a model
    fresh from its initialization holds it (timm's ``zero_init_last``): the branch adds nothing.
    ``relu_first``: the port applying the block's ReLU to the branch before the add, not after."""

    def __init__(self, relu_first: bool = False) -> None:
        super().__init__()
        self.stem, self.fc1, self.fc2 = nn.Linear(16, 16), nn.Linear(16, 32), nn.Linear(32, 16)
        self.gamma = nn.Parameter(torch.zeros(16))
        self.relu_first = relu_first

    def forward(self, x):
        h = torch.relu(self.stem(x))
        branch = self.gamma * self.fc2(torch.relu(self.fc1(h)))
        return h + torch.relu(branch) if self.relu_first else torch.relu(h + branch)


def zero_scaled():
    return _ScaledResidual()


def zero_scaled_relu_first():
    return _ScaledResidual(relu_first=True)


class _FusedWithHead(FusedBlock):
    """The fused block with a head of its own after it: a deeper model whose first tensors are named
    as the fused block's, so a map made for that block fills them and leaves the head alone."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 16)

    def forward(self, x):
        return self.head(super().forward(x))


def fused_with_head():
    return _FusedWithHead()
