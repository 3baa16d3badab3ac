"""What a failing comparison through a weight map says about the map: a failure there may be the
transfer's, not the model's, and the report says so before anything else."""

from __future__ import annotations

import torch
from torch import nn

import harness
from port_toys import randomized, tokens


class Scaled(nn.Module):
    """A linear layer and a learned output scale the reference does not have."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.alpha = nn.Parameter(torch.tensor(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.alpha


def _through_map(candidate: nn.Module, reference: nn.Module, **kwargs) -> harness.ParityReport:
    weights = harness.map_weights(candidate, reference, tokens(), **kwargs)
    weights.transfer(reference, candidate)
    return harness.compare(candidate, reference, tokens(), weights=weights)


def test_a_failure_through_a_map_that_leaves_a_read_tensor_unfilled_names_that_tensor_first():
    report = _through_map(Scaled(0.5).double(), randomized(nn.Sequential(nn.Linear(16, 16)), 2))
    assert not report.passed
    assert report.notes[0].startswith("the weight map gives no value to 1 candidate tensor(s) the forward reads (alpha)"), \
        report.notes


def test_a_failure_through_a_given_map_that_failed_its_own_check_says_the_map_is_not_verified():
    candidate, reference = randomized(nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16, eps=1e-2)), 1), \
        randomized(nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16)), 2)
    report = _through_map(candidate, reference)
    assert not report.passed
    assert report.notes[0].startswith("the weight map is NOT verified (its own check found disagreements at 1)"), report.notes


def test_a_failure_through_a_given_map_that_was_never_checked_says_so():
    candidate, reference = randomized(nn.Sequential(nn.Linear(16, 16), nn.GELU()), 1), \
        randomized(nn.Sequential(nn.Linear(16, 16), nn.GELU("tanh")), 2)
    report = _through_map(candidate, reference, verify=False)
    assert not report.passed and report.notes[0].startswith("the weight map was not verified"), report.notes


def test_a_passing_comparison_says_nothing_about_the_map():
    report = _through_map(Scaled(1.0).double(), randomized(nn.Sequential(nn.Linear(16, 16)), 2))
    assert report.passed and not any("weight map" in note for note in report.notes), report.notes


class Positions(nn.Module):
    """A linear layer after a learned position table added to the tokens, or without it."""

    def __init__(self, table: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.pos = nn.Parameter(torch.randn(1, 1, 16)) if table else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x + self.pos if self.pos is not None else x)


def test_a_failure_through_a_map_that_gives_a_read_reference_tensor_no_counterpart_names_it_first():
    report = _through_map(randomized(Positions(table=False), 1), randomized(Positions(table=True), 2))
    assert not report.passed
    assert report.notes[0].startswith("the reference's forward reads 1 tensor(s) that no candidate tensor takes (pos)"), \
        report.notes


def _saved_map_of_two_linears() -> tuple[nn.Module, nn.Module, dict]:
    """A candidate, its reference (two linear layers each) and their map as saved."""
    reference = randomized(nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16)), 2)
    candidate = randomized(nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16)), 1)
    return candidate, reference, harness.map_weights(candidate, reference, tokens()).to_dict()


def test_a_given_map_with_an_entry_removed_by_hand_names_the_tensor_it_leaves_unfilled():
    candidate, reference, table = _saved_map_of_two_linears()
    table["entries"] = [e for e in table["entries"] if e["candidate"] != "1.weight"]
    weights = harness.load_weight_map(table)
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, tokens(), weights=weights)
    assert not report.passed
    assert report.notes[0].startswith("the weight map gives no value to 1 candidate tensor(s) the forward reads (1.weight)"), \
        report.notes


def test_a_saved_map_whose_entries_were_edited_after_verification_reads_back_unverified():
    _, _, table = _saved_map_of_two_linears()
    assert table["verified"] and harness.load_weight_map(table).verified
    table["entries"][0]["reference"] = ["1.weight"]  # a hand edit pointing at the wrong tensor
    edited = harness.load_weight_map(table)
    assert edited.verified is None and any("edited after the map was verified" in n for n in edited.notes), \
        (edited.verified, edited.notes)
