"""Model specs for the command-line tests: ``tests/harness/port_specs.py:function``."""

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
