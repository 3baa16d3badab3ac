"""An untwinned culprit in a model too large to re-run whole as its ancestor (VGG's classifier, a
``Sequential`` of linears where timm splits a 1x1-conv MLP ``pre_logits`` from its ``head``) is
compared with the reference's ops from where its own work begins, not with the whole model's:
against the whole, its first linear paired with the features' first conv, a difference of no
consequence, and the ReLU it lost went unsaid."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness.diagnose
from harness.diagnose import diagnose_modules
from helpers import compare_port, seeded

CHANNELS, HIDDEN, CLASSES = 4, 16, 5


def _features() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, CHANNELS, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))


class Port(nn.Module):
    """torchvision's layout: the features flattened, then one classifier ``Sequential``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _features()
        self.classifier = nn.Sequential(nn.Linear(CHANNELS * 4, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                                        nn.Linear(HIDDEN, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class ConvMlp(nn.Module):
    """timm's ``pre_logits``: the linears as convs on the map, the first as wide as the map."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act1 = nn.Conv2d(CHANNELS, HIDDEN, 2), nn.ReLU()
        self.fc2, self.act2 = nn.Conv2d(HIDDEN, HIDDEN, 1), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.fc2(self.act1(self.fc1(x))))


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


class Original(nn.Module):
    """timm's layout, its biases zero as timm's VGG initializes them: no bias tells one layer's from another's."""

    def __init__(self) -> None:
        super().__init__()
        self.features, self.pre_logits, self.head = _features(), ConvMlp(), Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pre_logits(self.features(x)))


def _report(monkeypatch: pytest.MonkeyPatch):
    """The port with the ReLU after its classifier's second linear made an Identity, with no
    ancestor small enough to be re-run whole."""
    monkeypatch.setattr(harness.diagnose, "ANCESTOR_ELEMENTS", 16)
    reference = seeded(Original(), 0)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return compare_port(seeded(Port(), 0), reference, x, lambda port: port.classifier.__setitem__(3, nn.Identity()))


def _texts(report) -> list[str]:
    return [f["text"] for f in report.diagnosis]


def test_an_untwinned_classifier_that_lost_a_relu_between_its_linears_names_the_relu(monkeypatch):
    report = _report(monkeypatch)
    assert report.culprit == "classifier" and report.diagnosis and "relu missing in the candidate" in \
        report.diagnosis[0]["text"] and "pre_logits.act2 applies it" in report.diagnosis[0]["text"], _texts(report)


def test_an_untwinned_classifier_is_not_compared_with_the_reference_features(monkeypatch):
    report = _report(monkeypatch)
    assert not any("where the reference applies conv2d" in text for text in _texts(report)), _texts(report)


def test_a_reference_with_no_op_reading_the_candidates_tensors_gives_no_finding():
    """Where the reference's work for the candidate cannot be bounded, no op of it is a twin to name."""
    torch.manual_seed(0)
    reference, candidate = Original().double().eval(), nn.Sequential(nn.Linear(CHANNELS * 4, HIDDEN), nn.Tanh())
    candidate.double().eval()
    x, flat = torch.randn(1, 3, 4, 4, dtype=torch.float64), torch.randn(1, CHANNELS * 4, dtype=torch.float64)
    findings = diagnose_modules(candidate, reference, (x,), {}, candidate_inputs=((flat,), {}),
                                reads={"unread.weight"})
    assert findings == [], findings
