"""A model wrapped by ``torch.compile`` is compared through the eager module it wraps (compiled
graphs run no layer hooks), and the report says the compiler's own changes are not checked; a
TorchScript model runs without hooks, so only its outputs are compared, and the report says so."""

from __future__ import annotations

import torch
from torch import nn

import harness


def _mlp(hidden: int = 16) -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, hidden), nn.GELU(), nn.Linear(hidden, 4)).double().eval()


class _Port(nn.Module):
    """The same MLP under other names, with a tanh GELU when ``approximate``."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.fc_in, self.fc_out, self.approximate = nn.Linear(8, 16), nn.Linear(16, 4), approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(nn.functional.gelu(self.fc_in(x), approximate=self.approximate))


def _x() -> torch.Tensor:
    return torch.randn(3, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _same_weights() -> tuple[nn.Module, nn.Module]:
    reference, candidate = _mlp(), _mlp()
    candidate.load_state_dict(reference.state_dict())
    return candidate, reference


def test_a_compiled_candidate_is_compared_layer_by_layer():
    candidate, reference = _same_weights()
    report = harness.compare(torch.compile(candidate), reference, _x())
    assert report.passed and len(report.rows) == 4, report.format()


def test_a_compiled_candidate_says_the_compiler_is_not_checked():
    candidate, reference = _same_weights()
    report = harness.compare(torch.compile(candidate), reference, _x())
    assert any("torch.compile" in note and "not checked" in note for note in report.notes), report.notes


def test_a_compiled_port_maps_takes_the_weights_and_blames_its_gelu():
    reference, port = _mlp(), torch.compile(_Port(approximate="tanh").double().eval())
    weights = harness.map_weights(port, reference, _x())
    weights.transfer(reference, port)
    report = harness.compare(port, reference, _x(), weights=weights)
    assert weights.coverage == 1.0 and not report.passed and report.culprit == "<root>" \
        and "tanh" in report.format(), f"coverage {weights.coverage}\n{report.format()}"


def test_a_scripted_candidate_says_only_its_outputs_are_compared():
    candidate, reference = _same_weights()
    report = harness.compare(torch.jit.script(candidate), reference, _x())
    assert report.passed and any("TorchScript" in note and "only its outputs" in note for note in report.notes), \
        report.notes
