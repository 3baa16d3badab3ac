"""A port storing its shortcut's batch norm folded ahead of time, ``x * scale + shift`` with tensors
of its own, against a reference calling the norm: the fold twins the norm whatever follows it. A bug
after the fold (the residual add dropped, the ReLU moved before it or left out) is found as in the
port keeping the norm, not as the fold's scale paired with the norm's running mean by position."""

import pytest

from harness.diagnose import diagnose_modules
from port_toys import ENDINGS, ShortcutLast, feature_maps, ported_shortcut, randomized
from helpers import findings_text

BUGS = [ending for ending in ENDINGS if ending != "right"]


def _reference(frozen: bool = False) -> ShortcutLast:
    reference = randomized(ShortcutLast(), 2)
    if frozen:  # the same statistics, applied as x * scale + shift computed from them
        frozen_norm = pytest.importorskip("torchvision.ops.misc").FrozenBatchNorm2d
        norm = reference.downsample[1]
        reference.downsample[1] = frozen_norm(8).double()
        reference.downsample[1].load_state_dict(norm.state_dict(), strict=False)
    return reference


def _findings(reference: ShortcutLast, **options) -> list[dict]:
    port = ported_shortcut(reference, **options)
    return diagnose_modules(port, reference, (feature_maps()[:, :4],), {})


@pytest.mark.parametrize("shape", [(8,), (8, 1, 1), (1, 8, 1, 1)])
def test_a_stored_folded_shortcut_norm_is_no_finding_when_the_residual_add_is_dropped(shape):
    findings = _findings(_reference(), shape=shape, ending="add dropped")
    first = findings[0] if findings else {}
    assert (first.get("kind"), first.get("op")) == ("missing_op", "add") and \
        not [f for f in findings if f["kind"] == "argument"], \
        f"the dropped add is not named first, or the fold is blamed:\n{findings_text(findings)}"


@pytest.mark.parametrize("bug", BUGS)
def test_a_bug_after_a_stored_folded_norm_is_found_as_in_the_port_keeping_the_norm(bug):
    reference = _reference()
    folded, kept = (_findings(reference, folded=folded, ending=bug)[:1] for folded in (True, False))
    assert [(f["kind"], f["op"]) for f in folded] == [(f["kind"], f["op"]) for f in kept] != [], \
        f"folded:\n{findings_text(folded)}\nkept:\n{findings_text(kept)}"


def test_a_dropped_residual_add_after_a_fold_of_a_frozen_norm_is_named():
    findings = _findings(_reference(frozen=True), ending="add dropped")
    first = findings[0] if findings else {}
    assert (first.get("kind"), first.get("op")) == ("missing_op", "add"), \
        f"the dropped add is not named first:\n{findings_text(findings)}"


def test_a_fold_made_with_another_eps_in_a_residual_block_names_its_scale():
    findings = _findings(_reference(), norm_eps=1e-3)
    first = findings[0]["text"] if findings else ""
    assert "operand proj_scale, the scale of a batch norm folded ahead of time" in first, \
        f"the fold's scale is not named:\n{findings_text(findings)}"
