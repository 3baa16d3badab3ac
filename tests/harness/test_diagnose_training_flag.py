"""A module's ``training`` flag is a finding only where its code reads it (a dropout, a batch norm):
a freshly built activation is in train mode, and that changes nothing it computes."""

import torch
from torch import nn

import harness
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


class _DropPath(nn.Module):
    """Stochastic depth: drops the whole branch per sample in training, the identity in eval."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.empty(x.shape[0], 1, dtype=x.dtype).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class _Block(nn.Module):
    def __init__(self, drop: float | None) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.drop = _DropPath(drop) if drop is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.fc2(self.fc1(x).relu())
        return x + (self.drop(branch) if self.drop is not None else branch)


def test_a_stochastic_depth_left_in_training_without_a_twin_is_named_first():
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(4, 8), _Block(None)).double().eval()
    candidate = nn.Sequential(nn.Linear(4, 8), _Block(0.5)).double().eval()
    candidate.load_state_dict(reference.state_dict())
    candidate[1].drop.train()
    x = torch.randn(6, 4, dtype=torch.float64)
    report = harness.compare(candidate, reference, x)
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert report.culprit == "1.drop" and why.startswith("1.drop: _DropPath runs in training mode"), report.format()


def test_a_dropout_left_in_training_is_ranked_before_the_ops_it_changes():
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Dropout(0.5), nn.Linear(8, 4)).double().eval()
    candidate = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Dropout(0.5), nn.Linear(8, 4)).double().eval()
    candidate.load_state_dict(reference.state_dict())
    candidate[2].train()
    report = harness.compare(candidate, reference, torch.randn(6, 4, dtype=torch.float64))
    assert report.diagnosis and report.diagnosis[0]["argument"] == "training", report.format()


class _NoDrop(nn.Module):
    """Reads ``training`` to no effect: its dropout probability is 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(x, 0.0, self.training)


class _Mlp(nn.Module):
    def __init__(self, dropout: bool) -> None:
        super().__init__()
        self.mix, self.fc = _NoDrop(), nn.Linear(4, 8)
        self.act = nn.Sequential(nn.GELU(), nn.Dropout(0.5)) if dropout else nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(self.mix(x)))


def test_a_model_left_in_training_names_the_dropout_not_a_module_reading_the_flag_to_no_effect():
    torch.manual_seed(0)
    reference = nn.Sequential(_Mlp(dropout=False)).double().eval()
    candidate = nn.Sequential(_Mlp(dropout=True)).double().train()  # .eval() forgotten
    candidate.load_state_dict(reference.state_dict())
    report = harness.compare(candidate, reference, torch.randn(6, 4, dtype=torch.float64))
    assert report.diagnosis and report.diagnosis[0]["module"] == "0.act.1", report.format()
