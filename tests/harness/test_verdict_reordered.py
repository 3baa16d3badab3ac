"""An equivalent rewrite whose intermediate tensors hold the reference's values in another order:
patches unfolded from the transposed map and folded back transposed, around layers that treat
every pixel and every patch alike. The outputs agree, so those rows, which hold the same elements
rearranged, do not fail the run; a note names them. A rewrite that does not undo its arrangement,
or any change of values, still fails."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import harness
from helpers import transferred

C, K = 8, 2  # channels, patch size


def _unfold(x: torch.Tensor) -> torch.Tensor:
    b, c = x.shape[:2]
    return F.unfold(x, K, stride=K).reshape(b, c, K * K, -1)


def _fold(p: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    b, c, pixels, n = p.shape
    return F.fold(p.reshape(b, c * pixels, n), size, K, stride=K)


class PatchMixer(nn.Module):
    """The original: patches of the map, a norm and a pointwise conv over them, folded back."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.norm, self.mix, self.head = nn.Conv2d(3, C, 1), nn.GroupNorm(1, C), nn.Conv2d(C, C, 1), nn.Conv2d(C, 4, 1)

    def patches(self, x):
        return _unfold(x)

    def merged(self, p, size):
        return _fold(p, size)

    def forward(self, x):
        x = self.stem(x)
        p = self.patches(x)
        return self.head(self.merged(p + self.mix(self.norm(p)), x.shape[2:]))


class TransposedPatchMixer(PatchMixer):
    """The rewrite: patches of the transposed map, transposed back once folded (the same function)."""

    def __init__(self, transpose_back: bool = True) -> None:
        super().__init__()
        self.transpose_back = transpose_back

    def patches(self, x):
        return _unfold(x.transpose(2, 3))

    def merged(self, p, size):
        out = _fold(p, (size[1], size[0]))
        return out.transpose(2, 3) if self.transpose_back else out


class Port(nn.Module):
    """``TransposedPatchMixer`` under other names (paired by weights)."""

    def __init__(self, transpose_back: bool = True) -> None:
        super().__init__()
        self.body = TransposedPatchMixer(transpose_back)

    def forward(self, x):
        return self.body(x)


def _ported(dtype=torch.float64, transpose_back: bool = True):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    original = PatchMixer().double().eval()
    with torch.no_grad():
        original.norm.weight.normal_(1, 0.2), original.norm.bias.normal_(0, 0.2)
    port, original, weights = transferred(Port().double().eval(), original, x)
    port.body.transpose_back = transpose_back
    return port.to(dtype), original.to(dtype), weights, x.to(dtype)


def test_patches_unfolded_from_the_transposed_map_pass_as_an_equivalent_rewrite():
    port, original, weights, x = _ported()
    report = harness.compare(port, original, x, weights=weights)
    assert report.passed, f"an equivalent rewrite should pass\n{report.format()}"


def test_patches_unfolded_from_the_transposed_map_pass_at_float32():
    port, original, weights, x = _ported(torch.float32)
    report = harness.compare(port, original, x, weights=weights)
    assert report.passed, f"an equivalent rewrite should pass at float32\n{report.format()}"


def test_rows_holding_the_values_in_another_order_are_named_in_a_note():
    port, original, weights, x = _ported()
    report = harness.compare(port, original, x, weights=weights)
    note = next((n for n in report.notes if "hold the reference's values in another order" in n), None)
    assert note is not None and "body.norm#0" in note and "body.mix#0" in note, \
        f"expected a note naming body.norm and body.mix, got notes {report.notes}"


def test_patches_folded_back_without_the_transpose_still_fail():
    port, original, weights, x = _ported(transpose_back=False)
    report = harness.compare(port, original, x, weights=weights)
    assert not report.passed, f"a transposed map is a real error\n{report.format()}"


def test_a_weight_changed_inside_the_rearranged_layers_still_fails():
    port, original, weights, x = _ported()
    with torch.no_grad():
        port.body.mix.weight[0, 0] += 1e-3
    report = harness.compare(port, original, x, weights=weights)
    assert (report.passed, report.culprit) == (False, "body.mix"), \
        f"passed {report.passed}, culprit {report.culprit}; expected body.mix\n{report.format()}"
