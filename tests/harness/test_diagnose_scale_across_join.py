"""A layer scale on the wrong side of the residual add: ``(x + f(x)) * gamma`` where the reference
computes ``x + gamma * f(x)``. Both adds read the block's input, so the add keeps its place and the
scale is named, not the add said moved. A port that drops the scale (``x + f(x)``) reads the same
way once the map is inferred on it: the scale's vector, of the norm parameters' shape, goes to the
next norm's scale, which then multiplies the sum by the reference's ``ls1``."""

import torch
from torch import nn

import harness
from port_toys import randomized

WIDTH = 8


class Affine(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.alpha, self.beta = nn.Parameter(torch.ones(WIDTH)), nn.Parameter(torch.zeros(WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * x + self.beta


class ScaledResidualBlock(nn.Module):
    """Two residual branches, each an affine norm, a linear and a layer scale (ResMLP's block)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.fc1, self.ls1 = Affine(), nn.Linear(WIDTH, WIDTH), nn.Parameter(torch.ones(WIDTH))
        self.norm2, self.fc2, self.ls2 = Affine(), nn.Linear(WIDTH, WIDTH), nn.Parameter(torch.ones(WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1 * self.fc1(self.norm1(x))
        return x + self.ls2 * self.fc2(self.norm2(x))


class ScaleShift(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale, self.shift = nn.Parameter(torch.ones(WIDTH)), nn.Parameter(torch.zeros(WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class ScaledResidualPort(nn.Module):
    """``bug``: "after" scales the sum, "dropped" never reads ``g1``."""

    def __init__(self, bug: str | None = None) -> None:
        super().__init__()
        self.pre1, self.mix, self.g1 = ScaleShift(), nn.Linear(WIDTH, WIDTH), nn.Parameter(torch.ones(WIDTH))
        self.pre2, self.mlp, self.g2 = ScaleShift(), nn.Linear(WIDTH, WIDTH), nn.Parameter(torch.ones(WIDTH))
        self.bug = bug

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.mix(self.pre1(x))
        if self.bug == "after":
            x = (x + t) * self.g1
        else:
            x = x + (t if self.bug == "dropped" else self.g1 * t)
        return x + self.g2 * self.mlp(self.pre2(x))


class Net(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.stem, self.block, self.head = nn.Linear(4, WIDTH), block, nn.Linear(WIDTH, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


def _report(bug: str | None) -> "harness.Report":
    reference = randomized(Net(ScaledResidualBlock()), seed=2)
    candidate = Net(ScaledResidualPort(bug)).double().eval()
    x = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)  # inferred on the port as written, bug included
    weights.transfer(reference, candidate)
    return harness.compare(candidate, reference, x, weights=weights)


def _why(report: "harness.Report") -> str:
    return report.diagnosis[0]["text"] if report.diagnosis else "(no diagnosis)"


def test_scaled_residual_block_ported_right_passes() -> None:
    report = _report(None)
    assert report.passed, f"expected the right port to pass, got:\n{report.format()}"


def test_scale_applied_to_the_sum_is_named_not_the_add() -> None:
    report = _report("after")
    why = _why(report)
    assert report.culprit == "block" and why.startswith("block: mul by ls1 (the candidate's mul by g1) and add in the "
                                                        "other order"), \
        f"expected the mul by ls1 named as applied after the add, got culprit {report.culprit}: {why}"


def test_dropped_scale_is_named_under_a_map_inferred_on_the_port() -> None:
    report = _report("dropped")
    why = _why(report)
    assert report.culprit == "block" and why.startswith("block: mul by ls1") and "add in another place" not in why, \
        f"expected the mul by ls1 named, not the residual add said moved, got culprit {report.culprit}: {why}"
