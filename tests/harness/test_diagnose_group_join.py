"""A grouped conv written as one conv per group on the channel chunks of its input is that grouped
conv, its output the groups' joined in the chunks' order: the groups joined in another order are
named as that join's order, each operand by the group it holds, not as a difference in ``groups``."""

from __future__ import annotations

import torch

import harness
from helpers import compare_port, findings_text
from port_toys import GroupedConvNet


def _images() -> torch.Tensor:
    return torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _report(change=lambda model: None):
    reference = GroupedConvNet().double().eval()
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    return compare_port(GroupedConvNet(per_group=True).double().eval(), reference, _images(), change)


def test_per_group_convs_joined_in_order_pass_against_the_grouped_conv() -> None:
    report = _report()
    assert report.passed, f"a grouped conv written per group failed:\n{findings_text(report.diagnosis)}"


def test_groups_joined_in_reverse_order_name_the_join_order() -> None:
    report = _report(lambda model: setattr(model.gconv, "reverse", True))
    assert not report.passed and report.culprit == "gconv", f"expected gconv blamed, got {report.culprit}"
    why = findings_text(report.diagnosis)
    expected = ("gconv: cat joins the outputs of the 4 per-group conv2ds in another order than the groups of the "
                "reference's grouped conv2d (the chunks they read): operand 0 holds group 3 (parts.3)")
    assert expected in why.splitlines()[0], f"expected the join order named, got:\n{why}"


def test_groups_joined_in_reverse_order_are_no_groups_difference() -> None:
    why = findings_text(_report(lambda model: setattr(model.gconv, "reverse", True)).diagnosis)
    assert "groups 1" not in why, f"the per-group convs were compared one by one with the grouped conv:\n{why}"
