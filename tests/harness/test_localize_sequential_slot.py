"""An operation dropped inside an untwinned ``nn.Sequential`` (its ReLU replaced by an
``Identity``, which records as a pass-through) is left out between two of its twinned children:
the Sequential, whose chaining runs between the last agreeing call and the first failing one, is
named, not the model around it."""

from __future__ import annotations

import torch
from torch import nn

from helpers import compare_port


class Original(nn.Module):
    """Named layers, the activation a module of its own (timm's layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.fc1, self.act, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(torch.relu(self.stem(x)))))


class Port(nn.Module):
    """The same layers in Sequentials (torchvision's layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.body = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.body(self.stem(x))


def test_relu_dropped_inside_an_untwinned_sequential_blames_the_sequential():
    torch.manual_seed(0)
    x = torch.randn(4, 16, dtype=torch.float64)
    report = compare_port(Port().double().eval(), Original().double().eval(), x,
                          lambda port: port.body.__setitem__(1, nn.Identity()))
    assert not report.passed
    assert report.culprit in ("body", "body.1"), \
        f"culprit {report.culprit}, expected body (its ReLU slot holds an Identity)\n{report.format()}"
