"""A structural guess pairs two calls only where the innermost twins around them are each other's
twins. A port padding its convs by hand in a wrapper (``F.pad``, then an unpadded conv child)
against an original padding inside the conv and applying its activation inside its norm (timm's
``BatchNormAct2d``): the wrapper ends between the conv and the norm, as the original's activation
does, and has its shape, but the activation runs inside the norm's twin and the wrapper does not.
Taken for the activation's twin, the wrapper hid that activation from the norm's comparison, and
the correct port failed on a norm said to lack its GELU."""

from __future__ import annotations

from helpers import compare_port, transferred
from port_toys import NormActStem, PaddedStem, images, randomized


def compared():
    return compare_port(randomized(PaddedStem(), 1), randomized(NormActStem(), 2), images())


def test_a_conv_padded_in_a_wrapper_passes_against_a_norm_applying_its_activation_inside():
    report = compared()
    assert report.passed, report.format()


def test_a_conv_wrapper_is_no_guess_for_the_activation_inside_the_next_norm():
    report = compared()
    guessed = [r.candidate for r in report.rows if r.reference == "norm1.act"]
    assert not guessed, f"the original's activation inside its norm was paired with {guessed}:\n{report.format()}"


def test_the_weight_map_of_a_conv_padded_in_a_wrapper_verifies():
    _, _, weights = transferred(randomized(PaddedStem(), 1), randomized(NormActStem(), 2), images())
    assert weights.verified, str(weights)
