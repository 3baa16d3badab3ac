"""An op fed the reference's values in another arrangement is explained by that arrangement: slices
concatenated in another order (a patch merging's four strided slices), a roll, a flip; or, when
the map reaches it with two axes exchanged (a conv run on a transposed map), by the layout op that
exchanged them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness
from harness.diagnose import rearrangement
from harness.metrics import DEFAULT_TOLERANCES
from helpers import compare_port, findings_text

C = 4
F64 = DEFAULT_TOLERANCES["float64"]


def _map() -> torch.Tensor:
    return torch.randn(2, 6, 8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arranged, expected", [
    (lambda t: torch.roll(t, (2, -3), (1, 2)), [(1, "rolled by 2 (torch.roll of the reference's by 2)"),
                                                (2, "rolled by -3 (torch.roll of the reference's by -3)")]),
    (lambda t: t.flip(2), [(2, "reversed")]),
    (lambda t: torch.cat([t[..., :4], t[..., 8:12], t[..., 4:8], t[..., 12:]], -1),
     [(3, "[4:8] holds the reference's [8:12], [8:12] holds the reference's [4:8]")]),
])
def test_a_reordering_along_axes_is_said_axis_by_axis(arranged, expected) -> None:
    assert rearrangement(arranged(_map()), _map(), F64) == expected


def test_blocks_of_channels_exchanged_in_a_map_dead_at_half_its_channels_are_named_as_ranges() -> None:
    # a pooled map after a ReLU: 512 channels of one value each, about half of them zero; so many
    # look-alikes are paired by the runs of their neighbours, not in sorted order
    pooled = torch.relu(torch.randn(1, 512, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    exchanged = torch.cat([pooled[:, :128], pooled[:, 256:384], pooled[:, 128:256], pooled[:, 384:]], 1)
    assert rearrangement(exchanged, pooled, F64) == [
        (1, "[128:256] holds the reference's [256:384], [256:384] holds the reference's [128:256]")]


@pytest.mark.parametrize("other", [
    lambda t: t,  # the same values in the same order
    lambda t: t + 1e-3,  # other values
    lambda t: t.transpose(1, 2).reshape(t.shape),  # scrambled across axes, no per-axis reordering
])
def test_no_reordering_is_claimed_where_none_gives_the_reference(other) -> None:
    assert rearrangement(other(_map()), _map(), F64) == []


class _ReshapeMerging(nn.Module):
    """Swin's patch merging written with a reshape: the 2x2 neighbours' channels, joined."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * C), nn.Linear(4 * C, 2 * C, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class _SlicedMerging(_ReshapeMerging):
    """The same with four strided slices; ``order`` the slices' order in the concatenation."""

    def __init__(self, order: tuple[int, ...] = (0, 1, 2, 3)) -> None:
        super().__init__()
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        return self.reduction(self.norm(torch.cat([parts[k] for k in self.order], -1)))


class _Stage(nn.Module):
    def __init__(self, merging: nn.Module) -> None:
        super().__init__()
        self.embed, self.merge = nn.Linear(3, C), merging

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(self.embed(x))


def _merging_report(order: tuple[int, ...]) -> harness.Report:
    ref = _Stage(_ReshapeMerging()).double().eval()
    harness.randomize_(ref, torch.Generator().manual_seed(0))
    x = torch.randn(2, 6, 8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return compare_port(_Stage(_SlicedMerging(order)).double().eval(), ref, x)


def test_a_patch_merging_written_with_slices_passes() -> None:
    report = _merging_report((0, 1, 2, 3))
    assert report.passed, report.format()


def test_a_patch_merging_joining_two_slices_in_another_order_names_the_exchanged_channels() -> None:
    report = _merging_report((0, 2, 1, 3))
    assert report.culprit == "merge", f"culprit {report.culprit!r}, expected 'merge'"
    assert report.diagnosis[0]["text"] == (
        "merge.norm: layer_norm receives the reference's values in another order: along dim 3, "
        "[4:8] holds the reference's [8:12], [8:12] holds the reference's [4:8]"), findings_text(report.diagnosis)


class _Block(nn.Module):
    """Two 3x3 convs; ``transposed``: the second runs on the map with H and W exchanged, and the
    result is exchanged back (the kernel is then applied transposed)."""

    def __init__(self, transposed: bool = False) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, C, 3, padding=1), nn.Conv2d(C, C, 3, padding=1)
        self.transposed = transposed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        if self.transposed:
            return self.conv2(y.transpose(2, 3)).transpose(2, 3)
        return self.conv2(y)


def test_a_conv_run_on_a_transposed_map_names_the_transpose() -> None:
    ref = _Block().double().eval()
    harness.randomize_(ref, torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 6, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = compare_port(_Block().double().eval(), ref, x, lambda block: setattr(block, "transposed", True))
    assert report.diagnosis[0]["text"] == (
        "<root>: extra transpose(dim0=2, dim1=3) in the candidate before conv2d; the reference has none"), \
        findings_text(report.diagnosis)


class _Branches(nn.Module):
    """Three conv + ReLU branches joined on the channels; ``order``: the branches' order in the join.
    Some channels are dead (a ReLU of a strongly negative bias): zero slices match each other."""

    def __init__(self, order: tuple[int, ...] = (0, 1, 2)) -> None:
        super().__init__()
        self.branches = nn.ModuleList([nn.Conv2d(3, n, 1) for n in (4, 6, 4)])
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [torch.relu(branch(x)) for branch in self.branches]
        return torch.cat([outs[k] for k in self.order], 1)


class _Net(nn.Module):
    def __init__(self, order: tuple[int, ...] = (0, 1, 2)) -> None:
        super().__init__()
        self.mixed, self.head = _Branches(order), nn.Conv2d(14, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mixed(x))


def test_branches_joined_in_another_order_are_named_by_the_channels_they_hold() -> None:
    ref = _Net().double().eval()
    harness.randomize_(ref, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for branch in ref.mixed.branches:
            branch.bias[0] = -100.0  # a dead channel in each branch
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = compare_port(_Net().double().eval(), ref, x, lambda net: setattr(net.mixed, "order", (0, 2, 1)))
    assert report.diagnosis[0]["text"] == (
        "mixed: returns the reference's values in another order: along dim 1, [4:8] holds the reference's [10:14], "
        "[8:14] holds the reference's [4:10] (its operations compute what the reference's do)"), \
        findings_text(report.diagnosis)
