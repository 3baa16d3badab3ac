"""A culprit is moved to a call inside it that passed within its rounding only when the diagnosis
blames that call for a setting (an eps, an approximation): rounding can hide a setting's small
effect, not an operand's. A batch norm folded into ``x * scale + shift`` passes on a difference of
rounding, and the op-level diagnosis may pair its scale with the reference norm's statistics by
position: that operand finding does not make the norm the culprit of a block that dropped its
shortcut."""

from __future__ import annotations

from port_toys import FoldedInvertedResidual, InvertedResidualNet, feature_maps, randomized

from helpers import compare_port


def _without_shortcut():
    def drop(model):
        model.block.use_shortcut = False

    port = InvertedResidualNet(FoldedInvertedResidual).double().eval()
    return compare_port(port, randomized(InvertedResidualNet(), 3), feature_maps(), drop)


def test_a_dropped_shortcut_blames_the_block_not_its_folded_norm():
    report = _without_shortcut()
    assert not report.passed and report.culprit == "block", \
        f"the block that dropped its shortcut is not the culprit:\n{report.format()}"


def test_an_operand_finding_is_not_explained_as_a_setting_within_rounding():
    report = _without_shortcut()
    assert not any("differs from its twin in a setting" in n for n in report.notes), \
        "an operand finding is reported as a setting hidden by rounding:\n" + "\n".join(report.notes)
