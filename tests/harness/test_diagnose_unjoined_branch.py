"""A residual add the port forgot: where the port still computes the shortcut (before its main
branch, so no pair holds its ops and they read as the reference's missing), the finding says that
the port computes that branch and never adds it; where it does not compute it, that it lacks it."""

import pytest

from harness.diagnose import diagnose_modules
from port_toys import ShortcutFirst, ShortcutLast, feature_maps, ported_shortcut, randomized
from helpers import findings_text, transferred


@pytest.mark.parametrize("folded", [True, False], ids=["norm stored folded", "norm kept"])
def test_a_shortcut_computed_first_and_never_added_is_said_computed_not_lacking(folded):
    reference = randomized(ShortcutLast(), 2)
    port = ported_shortcut(reference, folded=folded, shortcut_first=True, ending="add dropped")
    findings = diagnose_modules(port, reference, (feature_maps()[:, :4],), {})
    first = findings[0]["text"] if findings else ""
    assert first.startswith("<root>: add missing") and "which the candidate computes too" in first \
        and "never adds" in first and "lacks" not in first, \
        f"the unused shortcut is not said computed and left out of the add:\n{findings_text(findings)}"


def test_a_shortcut_the_port_never_computes_is_said_lacking():
    reference, x = randomized(ShortcutLast(), 2), feature_maps()[:, :4]
    port, _, _ = transferred(randomized(ShortcutFirst(), 1), reference, x)
    port.residual = False
    findings = diagnose_modules(port, reference, (x,), {})
    first = findings[0]["text"] if findings else ""
    assert "add missing" in first and "a branch the candidate lacks too computes" in first, \
        f"the shortcut left out is not said lacking:\n{findings_text(findings)}"
