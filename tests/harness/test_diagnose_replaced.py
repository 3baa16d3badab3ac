"""An op replaced by another (a max pool for an average pool) is the error to explain: the ops
after it that the two sides spell differently (a head written as a conv against a flattening
linear) receive its error and are no findings of their own."""

import torch
from torch import nn
from torch.nn import functional as F

import harness
from port_toys import randomized
from helpers import findings_text


class ConvHead(nn.Module):
    """An average pool to 3x3 inside a head of a 3x3 conv and a 1x1 conv, a global mean, a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc1, self.fc2, self.fc = nn.Conv2d(4, 6, 3), nn.Conv2d(6, 6, 1), nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(F.relu(self.conv(x)), (3, 3))
        return self.fc(F.relu(self.fc2(F.relu(self.fc1(x)))).mean((2, 3)))


class LinearHead(nn.Module):
    """The same head as a pool module, a flatten and three linears."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.conv, self.pool = nn.Conv2d(3, 4, 3, padding=1), pool
        self.fc1, self.fc2, self.fc = nn.Linear(36, 6), nn.Linear(6, 6), nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv(x))).flatten(1)
        return self.fc(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _images() -> torch.Tensor:
    return torch.randn(1, 3, 7, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_a_max_pool_for_an_average_pool_is_the_only_op_finding_before_a_head_spelled_otherwise():
    reference, candidate = randomized(ConvHead(), 1), randomized(LinearHead(nn.AdaptiveAvgPool2d((3, 3))), 2)
    weights = harness.map_weights(candidate, reference, _images())
    weights.transfer(reference, candidate)
    assert harness.compare(candidate, reference, _images(), weights=weights).passed, "the clean port should pass"
    candidate.pool = nn.AdaptiveMaxPool2d((3, 3))
    report = harness.compare(candidate, reference, _images(), weights=weights)
    findings = [f for f in report.diagnosis if f["kind"] != "attribute"]
    assert [(f["kind"], f["candidate"], f["reference"]) for f in findings] == [
        ("op", "adaptive_max_pool2d", "adaptive_avg_pool2d")], findings_text(findings)


class WholeMapConv(nn.Module):
    """A conv whose kernel covers the whole 3x3 map: a linear over the flattened map."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(4, 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(x).flatten(1)


class FlatLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(36, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_a_changed_weight_of_a_linear_in_the_place_of_a_conv_is_named_not_the_linear():
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference, candidate = randomized(WholeMapConv(), 1), randomized(FlatLinear(), 2)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    with torch.no_grad():
        candidate.fc.weight[2] += 1e-3
    findings = [f for f in harness.compare(candidate, reference, x, weights=weights).diagnosis
                if f["kind"] != "attribute"]
    assert [(f["kind"], f["argument"]) for f in findings] == [("argument", "weight")] and \
        "holds other values" in findings[0]["text"], findings_text(findings)
