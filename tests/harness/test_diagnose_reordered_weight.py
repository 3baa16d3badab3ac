"""A weight holding exactly its twin's values in another order along its axes is said so, axis by
axis and in the words of the op's layout: the q and k row blocks of a fused projection exchanged,
a grouped conv's groups swapped, a stem kernel reading BGR for RGB (input channels reversed), a norm's
scale rolled. A weight holding other values is still said to hold other values; slices that hold one
value (rows of zeros) are never said to move, and many of them do not slow the search."""

from __future__ import annotations

import time

import torch
from torch import nn

import harness
from port_toys import SdpaFused, SdpaSplit
from harness.diagnose import rearrangement
from harness.metrics import DEFAULT_TOLERANCES
from helpers import compare_port, findings_text


class _Fused(nn.Module):
    """A fused q/k/v projection followed by an op that mixes its rows."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(8, 24), nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.qkv(x)))


class _Stem(nn.Module):
    """A patch stem on an RGB image, then a grouped conv and a norm."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.grouped(torch.relu(self.patch(x)))
        return self.norm(x.permute(0, 2, 3, 1))


def _why(model: type, change) -> str:
    torch.manual_seed(0)
    x = torch.randn(1, 5, 8, dtype=torch.float64) if model is _Fused else torch.randn(1, 3, 16, 16, dtype=torch.float64)
    reference = model().double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))  # a norm's scale is not all ones
    report = compare_port(model().double().eval(), reference, x, change)
    assert not report.passed, "the changed weight went unnoticed"
    return findings_text(report.diagnosis)


def _exchange(t: torch.Tensor, a: slice, b: slice) -> None:
    t[a], t[b] = t[b].clone(), t[a].clone()


def test_fused_projection_rows_exchanged_are_named_as_row_blocks() -> None:
    why = _why(_Fused, lambda m: _exchange(m.qkv.weight, slice(0, 8), slice(8, 16)))
    expected = ("qkv: linear operand weight holds the reference's weight reordered: rows (output features) "
                "[0:8] holds the reference's [8:16], [8:16] holds the reference's [0:8]")
    assert expected in why.splitlines()[0], f"expected the row blocks exchanged, got:\n{why}"


def test_grouped_conv_groups_swapped_are_named_as_output_channel_blocks() -> None:
    why = _why(_Stem, lambda m: _exchange(m.grouped.weight, slice(0, 2), slice(4, 6)))
    expected = ("grouped: conv2d operand weight holds the reference's weight reordered: output channels "
                "[0:2] holds the reference's [4:6], [4:6] holds the reference's [0:2]")
    assert expected in why.splitlines()[0], f"expected the groups' kernels exchanged, got:\n{why}"


def test_stem_kernel_reading_bgr_is_named_input_channels_reversed() -> None:
    why = _why(_Stem, lambda m: m.patch.weight.copy_(m.patch.weight.flip(1)))
    expected = "patch: conv2d operand weight holds the reference's weight reordered: input channels reversed"
    assert expected in why.splitlines()[0], f"expected the input channels reversed, got:\n{why}"


def test_rolled_norm_scale_is_named_rolled() -> None:
    why = _why(_Stem, lambda m: m.norm.weight.copy_(torch.roll(m.norm.weight, 1)))
    expected = "norm: layer_norm operand weight holds the reference's weight reordered: dim 0 rolled by 1"
    assert expected in why.splitlines()[0], f"expected the scale rolled, got:\n{why}"


def test_a_weight_with_other_values_is_not_called_reordered() -> None:
    why = _why(_Fused, lambda m: m.qkv.weight[3, 2].add_(0.5))
    first = why.splitlines()[0]
    assert "qkv: linear operand weight holds other values than the reference's weight" in first and "reordered" not in first, \
        f"expected other values, not a reordering, got:\n{why}"


def test_slices_of_one_value_are_never_claimed_reordered() -> None:
    reference = torch.zeros(8, 4, dtype=torch.float64)
    reference[5] = 1.0  # every column holds the same values: no column order to tell
    found = rearrangement(torch.roll(reference, 1, 0), reference, DEFAULT_TOLERANCES["float64"])
    assert [d for d, _ in found] == [0], f"expected the rows moved and nothing said of the columns, got {found}"


def test_a_vector_of_many_equal_values_is_searched_fast() -> None:
    reference = torch.zeros(512, dtype=torch.float64)
    reference[3], reference[7] = 1.0, 2.0  # a bias left mostly at its zero init
    start = time.perf_counter()
    found = rearrangement(torch.roll(reference, 1), reference, DEFAULT_TOLERANCES["float64"])
    took = time.perf_counter() - start
    assert found and took < 0.5, f"expected a reordering found within 0.5 s, got {found} in {took:.2f} s"


def test_split_projection_with_its_heads_exchanged_is_named_reordered_against_its_fused_rows() -> None:
    torch.manual_seed(0)
    reference = nn.Sequential(SdpaFused(), nn.Linear(8, 8)).double().eval()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    report = compare_port(nn.Sequential(SdpaSplit(), nn.Linear(8, 8)).double().eval(), reference, x,
                          lambda net: _exchange(net[0].k_proj.weight, slice(0, 2), slice(4, 6)))
    why = findings_text(report.diagnosis)
    expected = ("0.k_proj: linear operand k_proj.weight holds the reference's qkv.weight[8:16] reordered: rows (output "
                "features) [0:2] holds the reference's [4:6], [4:6] holds the reference's [0:2]")
    assert expected in why.splitlines()[0], f"expected the key's rows exchanged, got:\n{why}"
