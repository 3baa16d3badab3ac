"""Twins among nested modules holding the same tensors, chosen by the place each call has: the
reference's ``PosConv`` adds a residual around a depthwise conv inside it, and both hold the same
kernel. A port's position encoding of its own (owning the kernel, adding the residual itself)
stands where ``PosConv`` stands: its caller hands its output to the next module as it is. A bare
``nn.Conv2d`` whose caller adds the residual is the inner conv's twin. Only that choice blames a
lost residual on the module that lost it, whatever the lost residual makes its output resemble."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import transferred
from port_toys import BareConvPegNet, ChannelsLastPegNet, TokensWithPosConv, feature_maps, randomized


def _mapped_as_written(candidate: nn.Module):
    """The candidate, bug included, mapped and given the reference's weights, as a user does it."""
    return transferred(randomized(candidate, 1), randomized(TokensWithPosConv(), 2), feature_maps())


def _twins(report) -> dict[str, str]:
    return {row.candidate: row.reference for row in report.rows}


def test_a_position_encoding_of_its_own_twins_the_module_adding_the_residual():
    candidate, reference, weights = _mapped_as_written(ChannelsLastPegNet())
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    assert _twins(report)["peg"] == "pos_block.0", report.format(table=True)


def test_a_position_encoding_that_lost_its_residual_is_blamed_on_itself():
    candidate, reference, weights = _mapped_as_written(ChannelsLastPegNet(residual=False))
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    assert (report.passed, report.culprit) == (False, "peg"), report.format()


def test_a_bare_conv_whose_caller_adds_the_residual_twins_the_conv_inside():
    candidate, reference, weights = _mapped_as_written(BareConvPegNet())
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    assert report.passed and _twins(report)["peg"] == "pos_block.0.proj.0", report.format(table=True)


def test_a_bare_conv_whose_caller_forgets_the_residual_still_twins_the_conv_inside():
    candidate, reference, weights = _mapped_as_written(BareConvPegNet(residual=False))
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    assert _twins(report)["peg"] == "pos_block.0.proj.0", report.format(table=True)


def test_a_residual_the_caller_of_a_bare_conv_forgets_is_blamed_on_the_caller():
    candidate, reference, weights = _mapped_as_written(BareConvPegNet(residual=False))
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    assert (report.passed, report.culprit) == (False, "<root>"), report.format()


class _Branch(nn.Module):
    """A residual block whose convolution and norm sit in a ``Sequential`` child."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class _Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.conv(x))


class _Listed(nn.Module):
    """:class:`_Flat` held in a ``ModuleList`` that is never called itself, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks, self.head = nn.ModuleList([_Flat()]), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks[0](x))


def test_a_module_list_that_is_never_called_is_no_twin():
    candidate = randomized(nn.Sequential(_Branch(), nn.Conv2d(8, 4, 1)), 1)
    candidate, reference, weights = transferred(candidate, randomized(_Listed(), 2), feature_maps())
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    assert report.passed and _twins(report)["0"] == "blocks.0", report.format(table=True)
