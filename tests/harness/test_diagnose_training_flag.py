"""A module's ``training`` flag is a finding only where its code reads it (a dropout, a batch norm):
a freshly built activation is in train mode, and that changes nothing it computes."""

from torch import nn

from harness.diagnose import attribute_diff


def _training_findings(candidate: nn.Module, reference: nn.Module) -> list[str]:
    return [f["text"] for f in attribute_diff(candidate, reference, "block") if f["argument"] == "training"]


def test_an_activation_in_train_mode_against_one_in_eval_mode_is_no_finding():
    candidate, reference = nn.Sequential(nn.Linear(4, 4), nn.GELU()), nn.Sequential(nn.Linear(4, 4), nn.GELU())
    reference.eval(), candidate.eval(), candidate[1].train()
    found = _training_findings(candidate, reference)
    assert not found, f"a flag no code of these modules reads is reported: {found}"


def test_a_dropout_in_train_mode_against_one_in_eval_mode_is_named():
    candidate, reference = nn.Sequential(nn.Linear(4, 4), nn.Dropout()), nn.Sequential(nn.Linear(4, 4), nn.Dropout())
    reference.eval(), candidate.eval(), candidate[1].train()
    found = _training_findings(candidate, reference)
    assert found == ["block.1: Dropout.training True in the candidate, False in the reference"], found
