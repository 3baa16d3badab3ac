"""An error too small for the layers' tolerances, yet beyond the reference's own rounding at the
outputs (a LayerNorm eps of 1e-6 for 1e-5 at float32, in summary mode): no twin fails, so no
culprit is named, and the report says so and how to localize it, not that twins are missing."""

import torch
import torch.nn as nn

import harness
from harness.pairs import randomize_


class Tokens(nn.Module):
    def __init__(self, eps=1e-5):
        super().__init__()
        self.embed, self.norm, self.head = nn.Linear(8, 16), nn.LayerNorm(16, eps=eps), nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.norm(self.embed(x)))


def summary_report(dtype=torch.float32, mode="summary"):
    reference = Tokens().to(dtype).eval()
    randomize_(reference, torch.Generator().manual_seed(0))
    candidate = Tokens(eps=1e-6).to(dtype).eval()
    candidate.load_state_dict(reference.state_dict())
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1)).to(dtype) * 0.05
    return harness.compare(candidate, reference, x, mode=mode)


def test_error_below_layer_tolerances_says_no_twin_fails_and_how_to_localize():
    report = summary_report()
    assert not report.passed and report.culprit is None, report.format()
    note = next((n for n in report.notes if n.startswith("no twin fails")), None)
    assert note is not None and "dtype=torch.float64" in note and "mode='full'" in note, \
        f"expected a note that no twin fails, with float64 and full mode as remedies; notes: {report.notes}"


def test_error_below_layer_tolerances_does_not_send_the_user_to_unmatched_modules():
    report = summary_report()
    assert not any("compare the unmatched modules" in n for n in report.notes), report.notes


def test_error_below_layer_tolerances_is_localized_in_full_mode():
    report = summary_report(mode="full")
    assert report.culprit == "norm", report.format()
