"""A model with several final outputs: the text report names the output whose numbers it prints (the
worst), as the JSON's ``outputs`` does; one output needs no name."""

import torch
from torch import nn

import harness


class Classifier(nn.Module):
    """Features, logits and the predicted class id; ``offset`` is added to the class id (a bug)."""

    def __init__(self, offset: int = 0) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(6, 8), nn.Linear(8, 4)
        self.offset = offset

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        logits = self.head(features)
        return {"features": features, "logits": logits, "pred": logits.argmax(-1) + self.offset}


def _output_line(candidate: nn.Module, reference: nn.Module) -> str:
    torch.manual_seed(0)
    candidate.load_state_dict(reference.state_dict())
    report = harness.compare(candidate, reference, torch.randn(3, 6, dtype=torch.float64))
    text = report.format()
    assert not report.passed, text
    return next((line for line in text.splitlines() if line.startswith("output")), f"no output line in:\n{text}")


def test_the_failing_output_among_several_is_named_in_the_text():
    line = _output_line(Classifier(offset=1).double(), Classifier().double())
    assert line.startswith("output 'pred': 3 elements"), line


class Shifted(nn.Module):
    """``linear(x) + shift``: one output."""

    def __init__(self, shift: float = 0.0) -> None:
        super().__init__()
        self.linear, self.shift = nn.Linear(6, 4), shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.shift


def test_a_single_output_is_not_named():
    line = _output_line(Shifted(shift=1e-3).double(), Shifted().double())
    assert line.startswith("output: "), line
