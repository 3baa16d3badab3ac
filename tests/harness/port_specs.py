"""Model specs for the command-line tests: ``tests/harness/port_specs.py:function``."""

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
