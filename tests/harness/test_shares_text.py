"""Shares and closest calls as a passing report and a weight map print them: a share short of all
never reads 100%, and a shape-only guess that disagrees is no call "within tolerance"."""

from __future__ import annotations

import torch
from torch import nn

import harness
from harness.metrics import percent


def test_a_share_just_short_of_all_is_not_printed_as_all():
    assert (percent(0.99962), percent(1.0), percent(0.5)) == ("99.96%", "100.0%", "50.0%")


def test_a_share_just_above_none_is_not_printed_as_none():
    assert percent(0.0004) == "0.04%"


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.big, self.alpha = nn.Linear(64, 64), nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.big(x) * self.alpha


def test_a_map_leaving_one_scalar_out_does_not_read_as_full_coverage():
    torch.manual_seed(0)
    weights = harness.map_weights(_Scaled().double(), nn.Sequential(nn.Linear(64, 64)).double(),
                                  torch.randn(2, 64, dtype=torch.float64), verify=False)
    assert weights.coverage < 1 and "coverage 99.98%" in str(weights), str(weights)


class _Two(nn.Module):
    """A Tanh and a Sigmoid under names that tell nothing, called in the order ``order`` gives."""

    def __init__(self, names: tuple[str, str], order: tuple[int, int] = (0, 1)) -> None:
        super().__init__()
        self.names, self.order = names, order
        self.add_module(names[0], nn.Tanh())
        self.add_module(names[1], nn.Sigmoid())

    def forward(self, x):
        first, second = (getattr(self, self.names[i]) for i in self.order)
        return first(x) + second(x)


def test_a_passing_report_names_no_disagreeing_guess_as_closest_to_its_bound():
    # the port calls its Sigmoid first: pairing by order guesses wrong, the sum still agrees
    report = harness.compare(_Two(("u", "v"), (1, 0)), _Two(("p", "q")), torch.randn(3, dtype=torch.float64))
    tentative = [r.key for r in report.rows if r.status == "tentative"]
    assert report.passed and tentative, report.format()
    assert not any(f"closest to its bound: {key}" in report.format() for key in tentative), report.format()
