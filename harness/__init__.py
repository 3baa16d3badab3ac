"""Parity harness: trace two models layer by layer, align, measure, localize the first error.

Public API (contract, see ARCHITECTURE.md)::

    harness.list_pairs()                      # every registered pair
    pair = harness.get_pair("convnext_tiny")
    candidate, reference = pair.build(dtype=torch.float64)
    report = harness.compare(candidate, reference, pair.inputs(dtype=torch.float64), rename=pair.rename)
    report.passed, report.first_divergence, report.culprit, report.rows, report.to_dict()
    harness.compare_pair("convnext_tiny", candidate=my_modified_model, dtype=torch.float64)
"""

from harness.api import compare, compare_pair
from harness.metrics import DEFAULT_TOLERANCES, Metrics, Tolerance, measure
from harness.pairs import Call, Pair, as_call, get_pair, list_pairs, randomize_, register
from harness.report import ParityReport
from harness.trace import Record, Tracer

__all__ = [
    "Call", "DEFAULT_TOLERANCES", "Metrics", "Pair", "ParityReport", "Record", "Tolerance",
    "Tracer", "as_call", "compare", "compare_pair", "get_pair", "list_pairs", "measure",
    "randomize_", "register",
]
