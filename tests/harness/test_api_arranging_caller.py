"""A torch module that computes its twin's operation in another form (a linear on patch vectors for
a strided conv on the map) and is handed the very values its twin reads, only in another order,
cannot have made an error itself: torch's code runs on weights mapped from the twin's. Its caller,
whose code gathered those values, is the culprit, and the why says they come in another order."""

from __future__ import annotations

from port_toys import LinearMerge, MergeNet, feature_maps, randomized

from helpers import compare_port


def _merged(order: tuple[int, ...]):
    def gather(model):
        model.merge.order = order

    return compare_port(MergeNet(LinearMerge).double().eval(), randomized(MergeNet(), 2), feature_maps(), gather)


def test_a_patch_merge_gathering_its_pixels_in_another_order_is_the_culprit():
    report = _merged((0, 2, 4, 1, 5, 3))
    assert not report.passed and report.culprit == "merge", \
        f"the merge whose code gathers the patches in another order is not the culprit:\n{report.format()}"


def test_the_why_says_the_merged_values_come_in_another_order():
    report = _merged((0, 2, 4, 1, 5, 3))
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert why.startswith("merge: merge.lin is handed the values its twin") and "order" in why, \
        f"the why does not say the linear is handed its values in another order:\n{report.format()}"


def test_a_merge_gathering_its_pixels_right_passes():
    report = _merged((0, 2, 4, 1, 3, 5))
    assert report.passed, f"a right patch merge fails:\n{report.format()}"
