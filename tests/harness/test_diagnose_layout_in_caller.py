"""A layout op added where the reference lays its values out in the caller (tokens turned into a
map before a depthwise conv, by the port inside the conv's module, by the original around it) is
named as the op added, not as the first of the ops both sides do."""

import torch
from torch import nn

import harness


class MapConv(nn.Module):
    """A depthwise conv on a map its caller lays out."""

    def __init__(self) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dwconv(x)


class TokenConv(nn.Module):
    """The same conv, laying out the tokens itself; ``swap``: height and width exchanged after."""

    def __init__(self, swap: bool = False) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.swap = swap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, 4, 4)
        x = x.transpose(2, 3) if self.swap else x
        return self.dwconv(x).flatten(2).transpose(1, 2)


class ReferenceMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.dw, self.fc2 = nn.Linear(8, 8), MapConv(), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        return self.fc2(self.dw(x.transpose(1, 2).reshape(b, c, 4, 4)).flatten(2).transpose(1, 2))


class CandidateMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.dw, self.fc2 = nn.Linear(8, 8), TokenConv(), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dw(self.fc1(x)))


def test_a_transpose_added_after_the_layout_the_caller_makes_is_named_with_its_own_dims():
    torch.manual_seed(0)
    reference, candidate = ReferenceMlp().double().eval(), CandidateMlp().double().eval()
    x = torch.randn(1, 16, 8, dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    candidate.dw.swap = True
    report = harness.compare(candidate, reference, x, weights=weights)
    why = report.diagnosis[0]["text"] if report.diagnosis else "(no diagnosis)"
    assert (report.culprit, why) == (
        "dw", "dw: extra transpose(dim0=2, dim1=3) in the candidate before conv2d; the reference has none"), \
        (report.culprit, why)
