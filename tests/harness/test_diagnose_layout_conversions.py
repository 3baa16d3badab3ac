"""A layout op that only converts between the two implementations' layouts (a permute into NCHW
for a convolution, a token sequence flattened from a map) is what the correct port does too: it is
never the finding. The diagnosis goes on to the real difference; where the layout ops themselves
move the values elsewhere, it says what they do to the values."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from helpers import compare_port, findings_text

C = 8  # as many channels as rows and columns: NHWC and NCHW maps of one shape


class _NchwBlock(nn.Module):
    """A ConvNeXt block as the reference writes it: depthwise conv on NCHW, the MLP channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(C, C, 3, padding=1, groups=C)
        self.norm = nn.LayerNorm(C)
        self.fc1, self.fc2 = nn.Linear(C, 2 * C), nn.Linear(2 * C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        return x + self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)


class _NhwcBlock(_NchwBlock):
    """The same block on an NHWC map, permuted into NCHW for its convolution only."""

    residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        y = self.norm(self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        y = self.fc2(F.gelu(self.fc1(y)))
        return x + y if self.residual else y


class _NchwNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block = nn.Conv2d(3, C, 2, stride=2), _NchwBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))


class _NhwcNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block = nn.Conv2d(3, C, 2, stride=2), _NhwcBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _compare_channels_last(change=lambda cand: None):
    ref = _NchwNet().double().eval()
    x = torch.randn(1, 3, 2 * C, 2 * C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return compare_port(_NhwcNet().double().eval(), ref, x, change)


def test_a_channels_last_port_of_a_square_map_passes() -> None:
    report = _compare_channels_last()
    assert report.passed, report.format()


def test_a_dropped_residual_on_a_square_channels_last_map_is_the_finding_not_its_permute() -> None:
    report = _compare_channels_last(lambda cand: setattr(cand.block, "residual", False))
    assert report.culprit == "block", f"culprit {report.culprit!r}, expected 'block'"
    first = report.diagnosis[0] if report.diagnosis else {}
    assert (first.get("kind"), first.get("op")) == ("missing_op", "add"), findings_text(report.diagnosis)


class _ShuffledUnit(nn.Module):
    """Two branches joined, then their channels interleaved as a channel shuffle of two groups does
    (torchvision's view, transpose, view)."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Conv2d(C, C, 1), nn.Conv2d(C, C, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.left(x), self.right(x)], dim=1)
        b, c, h, w = out.shape
        return out.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


class _IndexShuffledUnit(_ShuffledUnit):
    """The same shuffle as a gather of the channels at the interleaving permutation; ``inverse``:
    at its inverse, which takes the shuffled channels back."""

    inverse = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.left(x), self.right(x)], dim=1)
        order = torch.arange(out.shape[1]).view(2, -1)
        return out[:, (order if self.inverse else order.t()).reshape(-1)]


class _ShuffleNet(nn.Module):
    def __init__(self, unit: type[nn.Module]) -> None:
        super().__init__()
        self.stem, self.unit, self.head = nn.Conv2d(3, C, 1), unit(), nn.Conv2d(2 * C, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.unit(self.stem(x)))


def _compare_shuffles(change=lambda cand: None):
    ref = _ShuffleNet(_ShuffledUnit).double().eval()
    x = torch.randn(1, 3, 6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return compare_port(_ShuffleNet(_IndexShuffledUnit).double().eval(), ref, x, change)


def test_a_channel_shuffle_written_as_a_gather_passes() -> None:
    report = _compare_shuffles()
    assert report.passed, report.format()


def test_an_inverse_channel_shuffle_names_the_channels_it_moves_not_its_gather() -> None:
    report = _compare_shuffles(lambda cand: setattr(cand.unit, "inverse", True))
    assert report.culprit == "unit", f"culprit {report.culprit!r}, expected 'unit'"
    first = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert "another order" in first and "along dim 1" in first, findings_text(report.diagnosis)


G = 4  # a 4x4 grid of tokens, each gathered from the map at a stride of its size / 4


class _GridAttention(nn.Module):
    """A norm, then a linear and each grid's mean over its tokens, on an NHWC map cut into a 4x4
    grid of stride H/4 (MaxViT's grid partition), put back as a map."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.mix = nn.LayerNorm(C), nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        b, h, w, c = x.shape
        t = self.norm(x).view(b, G, h // G, G, w // G, c).permute(0, 2, 4, 1, 3, 5).reshape(-1, G * G, c)
        t = self.mix(t + t.mean(dim=1, keepdim=True)).view(b, h // G, w // G, G, G, c).permute(0, 3, 1, 4, 2, 5)
        return x + t.reshape(b, h, w, c)


class _ChannelsFirstGridAttention(_GridAttention):
    """The same on an NCHW map, its norm through NHWC and back; ``windows``: cut into contiguous
    4x4 windows instead of the grid."""

    windows = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        b, c, h, w = x.shape
        y = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.windows:
            t = y.reshape(b, c, h // G, G, w // G, G).permute(0, 2, 4, 3, 5, 1).reshape(-1, G * G, c)
            t = self.mix(t + t.mean(dim=1, keepdim=True)).reshape(b, h // G, w // G, G, G, c).permute(0, 5, 1, 3, 2, 4)
        else:
            t = y.reshape(b, c, G, h // G, G, w // G).permute(0, 3, 5, 2, 4, 1).reshape(-1, G * G, c)
            t = self.mix(t + t.mean(dim=1, keepdim=True)).reshape(b, h // G, w // G, G, G, c).permute(0, 5, 3, 1, 4, 2)
        return x + t.reshape(b, c, h, w)


class _GridNet(nn.Module):
    def __init__(self, block: type[nn.Module], channels_last: bool) -> None:
        super().__init__()
        self.stem, self.block, self.channels_last = nn.Conv2d(3, C, 1), block(), channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return self.block(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) if self.channels_last else self.block(y)


def _compare_grids(change=lambda cand: None):
    ref = _GridNet(_GridAttention, True).double().eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return compare_port(_GridNet(_ChannelsFirstGridAttention, False).double().eval(), ref, x, change)


def test_a_channels_first_grid_partition_passes() -> None:
    report = _compare_grids()
    assert report.passed, report.format()


def test_windows_cut_for_a_grid_name_the_places_the_tokens_are_gathered_from() -> None:
    report = _compare_grids(lambda cand: setattr(cand.block, "windows", True))
    assert report.culprit == "block", f"culprit {report.culprit!r}, expected 'block'"
    first = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert "gathered at other places" in first, findings_text(report.diagnosis)


P = 2  # pixels a side of each patch


class _PatchTokens(nn.Module):
    """MobileViT's unfold: the map's pixels as tokens, one sequence per place in a patch, normed,
    folded back into the map for a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.conv = nn.LayerNorm(C), nn.Conv2d(C, C, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        b, c, h, w = x.shape
        t = self.norm(x.reshape(b, c, h // P, P, w // P, P).permute(0, 3, 5, 2, 4, 1).reshape(b * P * P, -1, c))
        return self.conv(t.reshape(b, P, P, h // P, w // P, c).permute(0, 5, 3, 1, 4, 2).reshape(b, c, h, w))


class _ChannelsLastPatchTokens(_PatchTokens):
    """The same through an NHWC map; ``swapped``: each patch's rows and columns exchanged as it is
    folded back."""

    swapped = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        b, c, h, w = x.shape
        t = x.permute(0, 2, 3, 1).reshape(b, h // P, P, w // P, P, c).permute(0, 2, 4, 1, 3, 5)
        t = self.norm(t.reshape(b * P * P, -1, c)).reshape(b, P, P, h // P, w // P, c)
        if self.swapped:
            t = t.transpose(1, 2)
        return self.conv(t.permute(0, 3, 1, 4, 2, 5).reshape(b, h, w, c).permute(0, 3, 1, 2))


def _compare_patches(change=lambda cand: None):
    ref = _GridNet(_PatchTokens, False).double().eval()
    x = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return compare_port(_GridNet(_ChannelsLastPatchTokens, False).double().eval(), ref, x, change)


def test_patch_tokens_folded_through_a_channels_last_map_pass() -> None:
    report = _compare_patches()
    assert report.passed, report.format()


def test_patches_folded_back_transposed_name_the_dims_transposed_not_a_reshape() -> None:
    report = _compare_patches(lambda cand: setattr(cand.block, "swapped", True))
    assert report.culprit == "block", f"culprit {report.culprit!r}, expected 'block'"
    first = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert "dims 2 and 3 transposed" in first, findings_text(report.diagnosis)


N = 9  # patch tokens of a 3x3 grid
REG = 2  # register tokens


class _TokensFirst(nn.Module):
    """A class token joined to the patch tokens, then the position table added to all of them,
    then registers put after the class token (DINOv2 with registers)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, C, 2, stride=2)
        self.cls, self.reg = nn.Parameter(torch.randn(1, 1, C)), nn.Parameter(torch.randn(1, REG, C))
        self.pos = nn.Parameter(torch.randn(1, 1 + N, C))
        self.norm = nn.LayerNorm(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.cat([self.cls, self.embed(x).flatten(2).transpose(1, 2)], dim=1) + self.pos
        return self.norm(torch.cat([t[:, :1], self.reg, t[:, 1:]], dim=1))


class _PositionsApart(_TokensFirst):
    """The same adding each part of the table on its own; ``rows``: the table's rows added to the
    patches; ``registers_last``: registers after the patches."""

    rows, registers_last = slice(1, None), False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2) + self.pos[:, self.rows]
        cls = self.cls + self.pos[:, :1]
        return self.norm(torch.cat([cls, t, self.reg] if self.registers_last else [cls, self.reg, t], dim=1))


def _compare_tokens(change=lambda cand: None):
    ref = _TokensFirst().double().eval()
    x = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return compare_port(_PositionsApart().double().eval(), ref, x, change)


def test_a_position_table_added_in_parts_passes() -> None:
    report = _compare_tokens()
    assert report.passed, report.format()


def test_a_position_table_sliced_a_row_off_names_the_rows_not_the_flatten() -> None:
    report = _compare_tokens(lambda cand: setattr(cand, "rows", slice(0, N)))
    first = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert "pos[:, 0:9]" in first and "[:, 1:10]" in first, findings_text(report.diagnosis)


def test_registers_joined_after_the_patches_name_the_join_order_not_the_flatten() -> None:
    report = _compare_tokens(lambda cand: setattr(cand, "registers_last", True))
    first = report.diagnosis[0] if report.diagnosis else {}
    assert first.get("op") == "cat" and "another order" in first.get("text", ""), findings_text(report.diagnosis)


class _ChannelsFirstNorm(nn.LayerNorm):
    """A layer norm over the channels of an NCHW map, returning NCHW."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_a_channels_last_norm_returning_its_own_square_layout_has_no_finding() -> None:
    from harness.diagnose import diagnose_modules

    ref, cand = _ChannelsFirstNorm(C).double(), nn.LayerNorm(C).double()
    with torch.no_grad():
        ref.weight.normal_(generator=torch.Generator().manual_seed(2))
        cand.weight.copy_(ref.weight)
    x = torch.randn(1, C, C, C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    found = diagnose_modules(cand, ref, (x,), {}, name="norm", candidate_inputs=((x.permute(0, 2, 3, 1),), {}))
    assert found == [], findings_text(found)
