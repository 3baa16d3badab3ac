"""A conv padded by hand in a wrapper (``F.pad``, then an unpadded conv child) against a conv
padding inside: the conv's input is its twin's grown by a border of zeros. Re-run on its twin's
input as it is, it returns a smaller map, so it seemed to make every error that reached it; re-run
on that input padded as its own was, it is cleared, and the wrapper, which only pads, hands its
input on. An error is blamed where it is made: upstream, in the conv's weights, or in the caller's
code that left out an activation."""

from __future__ import annotations

from helpers import compare_port
from port_toys import NormActStem, PaddedStem, images, randomized


def compared(change):
    return compare_port(randomized(PaddedStem(), 1), randomized(NormActStem(), 2), images(), change)


def _why(report) -> str:
    return report.diagnosis[0]["text"] if report.diagnosis else "(no diagnosis)"


def test_an_error_before_a_padded_conv_is_received_by_the_conv():
    report = compared(lambda port: setattr(port.bn, "eps", 1e-2))
    assert not report.passed and report.introduced == ["bn"], report.format()


def test_a_weight_changed_in_a_padded_conv_is_blamed_on_the_conv():
    report = compared(lambda port: port.c2.conv.weight.mul_(1.01))
    assert not report.passed and report.introduced == ["c2.conv"], report.format()


def test_an_activation_left_out_before_a_padded_conv_is_blamed_on_the_code_that_applies_it():
    report = compared(lambda port: setattr(port, "act", False))
    assert not report.passed and report.culprit == "<root>" and "gelu missing" in _why(report), report.format()
