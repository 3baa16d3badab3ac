"""Injected bugs in toy models: the diagnosis names the operation and, for an argument, both values.

Each bug runs at float64 and at float32 (noise-floor verdict): both must fail, blame the same
culprit and give the same first finding.
"""

import pytest
import torch

import harness
from harness_toys import TOY, TOY_ATTENTION, drop_residual
from helpers import PARITY_DTYPES, swap_values_


# (pair, bug, culprit, expected first finding)
BUGS = {
    "eps": (TOY, lambda m: setattr(m.blocks[1].norm, "eps", 1e-5), "blocks.1.norm",
            dict(kind="argument", op="layer_norm", argument="eps", candidate=1e-5, reference=1e-6)),
    "gelu_tanh": (TOY, lambda m: setattr(m.blocks[2].act, "approximate", "tanh"), "blocks.2.act",
                  dict(kind="argument", op="gelu", argument="approximate", candidate="tanh", reference="none")),
    "dropped_residual": (TOY, lambda m: drop_residual(m.blocks[1]), "blocks.1",
                         dict(kind="missing_op", op="add", argument=None)),
    "attention_scale": (TOY_ATTENTION, lambda m: setattr(m.blocks[1].attn, "scale", 0.3), "blocks.1.attn",
                        dict(kind="argument", op="scaled_dot_product_attention", argument="scale", candidate=0.3,
                             reference=0.5)),
    "softmax_dim": (TOY_ATTENTION, lambda m: setattr(m.blocks[1].attn, "softmax_dim", -2), "blocks.1.attn",
                    dict(kind="argument", op="softmax", argument="dim", candidate=2, reference=3)),
    "softmax_dtype": (TOY_ATTENTION, lambda m: setattr(m.blocks[0].attn, "softmax_dtype", torch.float16),
                      "blocks.0.attn",
                      dict(kind="argument", op="softmax", argument="dtype", candidate="float16", reference=None)),
    "transposed_reshape": (TOY_ATTENTION, lambda m: setattr(m.blocks[1].attn, "transpose_heads", False),
                           "blocks.1.attn", dict(kind="missing_op", op="transpose", argument=None)),
    "missing_layer_scale": (TOY_ATTENTION, lambda m: setattr(m.blocks[1], "layer_scale", False), "blocks.1",
                            dict(kind="missing_op", op="mul", argument=None)),
    "swapped_weights": (TOY_ATTENTION, lambda m: swap_values_(m.blocks[0].gamma_1, m.blocks[0].gamma_2), "blocks.0",
                        dict(kind="argument", op="mul", argument="gamma_1", candidate="gamma_2", reference="gamma_1")),
}


def _diagnosed(name: str, dtype: torch.dtype) -> harness.ParityReport:
    pair, bug, _, _ = BUGS[name]
    candidate, _ = pair.build(dtype=dtype)
    bug(candidate)
    return harness.compare_pair(pair, candidate=candidate, dtype=dtype)


@pytest.mark.parametrize("dtype", PARITY_DTYPES)
@pytest.mark.parametrize("name", sorted(BUGS))
def test_injected_bug_is_diagnosed_at_its_operation(name, dtype):
    _, _, culprit, expected = BUGS[name]
    report = _diagnosed(name, dtype)
    assert not report.passed and report.culprit == culprit, report.format()
    first = report.diagnosis[0]
    assert {k: first[k] for k in expected} == expected, f"first finding: {first}\nall: {report.diagnosis}"
    assert first["module"].startswith(culprit) and first["text"].startswith(first["module"] + ":")


def test_missing_residual_reads_as_a_missing_add_after_the_last_operation():
    text = _diagnosed("dropped_residual", torch.float64).diagnosis[0]["text"]
    assert text.startswith("blocks.1: add missing in the candidate after the module's last operation (linear)"), text


def test_transposed_reshape_names_the_missing_transpose_and_its_dims():
    text = _diagnosis_text("transposed_reshape")
    assert "transpose(dim0=1, dim1=2) missing in the candidate before linear" in text, text


def test_swapped_weights_say_whose_values_the_candidate_holds():
    assert "gamma_1 holds the reference's gamma_2" in _diagnosis_text("swapped_weights")


def _diagnosis_text(name: str) -> str:
    return _diagnosed(name, torch.float64).diagnosis[0]["text"]


def test_a_comparison_told_not_to_diagnose_keeps_its_verdict_and_culprit_and_explains_nothing():
    pair, bug, culprit, _ = BUGS["eps"]
    candidate, _ = pair.build(dtype=torch.float64)
    bug(candidate)
    report = harness.compare_pair(pair, candidate=candidate, dtype=torch.float64, diagnose=False)
    assert (report.passed, report.culprit, report.diagnosis) == (False, culprit, []), report.format()


def test_diagnose_must_be_a_bool():
    with pytest.raises(TypeError, match="diagnose must be"):
        harness.CompareOptions(diagnose="no")


def test_attribute_diff_lists_the_setting_behind_an_argument():
    findings = _diagnosed("eps", torch.float64).diagnosis
    attribute = next(f for f in findings if f["kind"] == "attribute")
    assert (attribute["module"], attribute["argument"], attribute["candidate"], attribute["reference"]) == (
        "blocks.1.norm", "eps", 1e-5, 1e-6)


def test_verdict_and_json_carry_the_diagnosis():
    report = _diagnosed("eps", torch.float64)
    assert "why: blocks.1.norm: layer_norm eps 1e-05 in the candidate, 1e-06 in the reference" in report.verdict()
    result = report.to_dict()
    assert result["diagnosis"] == report.diagnosis and result["diagnosis"][0]["kind"] == "argument"
    assert set(result["diagnosis"][0]) == {"module", "kind", "op", "argument", "candidate", "reference", "text"}


def test_failing_rows_report_mismatched_elements_worst_index_and_bound():
    report = _diagnosed("gelu_tanh", torch.float64)
    row = next(r for r in report.to_dict()["layers"] if r["candidate"] == "blocks.2.act")
    assert row["mismatched"] > 0 and 0 < row["mismatched_share"] <= 1
    assert len(row["worst_index"]) == 3 and row["allowed"] > 0
    output = report.output
    assert output.passing_rtol is not None and output.passing_rtol > report.tolerance.rtol
    passing = harness.Tolerance(atol=report.tolerance.atol, rtol=output.passing_rtol * (1 + 1e-9))
    assert output.passes(passing), "the tolerance reported as passing does not pass"
    assert "it would pass with rtol >=" in report.verdict()


def test_every_independent_origin_is_explained():
    candidate, _ = TOY.build(dtype=torch.float64)
    candidate.blocks[0].norm.eps = 1e-5
    candidate.blocks[2].act.approximate = "tanh"
    report = harness.compare_pair(TOY, candidate=candidate, dtype=torch.float64)
    assert report.introduced == ["blocks.0.norm", "blocks.2.act"], report.format()
    explained = {(d["module"], d["argument"]) for d in report.diagnosis if d["kind"] == "argument"}
    assert {("blocks.0.norm", "eps"), ("blocks.2.act", "approximate")} <= explained, report.diagnosis
    assert report.diagnosis[0]["module"] == "blocks.0.norm"  # the culprit's finding reads as the why line
