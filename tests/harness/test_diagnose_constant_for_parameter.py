"""An op passing a number where its twin passes a parameter (a layer scale left the constant 1.0,
as a port builds it when no scale was configured): the finding names the parameter the reference
reads, not "None in the reference"."""

import torch
from torch import nn

from harness.diagnose import diagnose_modules
from port_toys import randomized, tokens
from helpers import findings_text


class Scaled(nn.Module):
    """``x + gamma * fc(x)``: ``gamma`` a learned per-channel scale, or a number."""

    def __init__(self, gamma: float | None = None) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.gamma = nn.Parameter(torch.ones(16)) if gamma is None else gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(x) * self.gamma


def _findings(candidate: nn.Module, reference: nn.Module) -> list[dict]:
    return [f for f in diagnose_modules(candidate, reference, (tokens(),), {}) if f["kind"] != "attribute"]


def _pair(gamma: float) -> tuple[nn.Module, nn.Module]:
    reference = randomized(Scaled(), seed=7)
    candidate = Scaled(gamma).double().eval()
    candidate.fc.load_state_dict(reference.fc.state_dict())
    return candidate, reference


def test_layer_scale_left_a_constant_names_the_reference_parameter() -> None:
    findings = _findings(*_pair(1.0))
    assert findings and findings[0]["op"] == "mul" and "gamma" in findings[0]["text"] \
        and "None" not in findings[0]["text"], \
        f"expected the mul named with the reference's gamma, not None, got:\n{findings_text(findings)}"


def test_layer_scale_left_a_constant_reads_as_a_constant_against_a_parameter() -> None:
    findings = _findings(*_pair(1.0))
    assert findings and "by the constant 1.0 in the candidate where the reference's mul reads gamma" \
        in findings[0]["text"], \
        f"expected the constant and the parameter in one sentence, got:\n{findings_text(findings)}"


def test_constant_scale_against_a_parameter_scale_the_other_way_names_the_candidate_parameter() -> None:
    candidate, reference = _pair(1.0)
    findings = _findings(reference, candidate)  # the candidate reads gamma where its twin multiplies by 1.0
    assert findings and "reads gamma in the candidate where the reference's mul is by the constant 1.0" \
        in findings[0]["text"], f"expected the candidate's gamma against the constant, got:\n{findings_text(findings)}"
