"""Parity harness: trace two models layer by layer, align, measure, localize the first error.

Public API (contract, see docs/architecture.md)::

    harness.list_pairs()                      # every registered pair
    pair = harness.get_pair("convnext_tiny")
    candidate, reference = pair.build(dtype=torch.float64)
    report = harness.compare(candidate, reference, pair.inputs(dtype=torch.float64), rename=pair.rename)
    report.passed, report.first_divergence, report.culprit, report.rows, report.to_dict()
    harness.compare(candidate, reference, inputs, backward=True).backward   # gradients, localized alike
    harness.compare_pair("convnext_tiny", candidate=my_modified_model, dtype=torch.float64)
    pair.options.replace(mode="summary").to_kwargs()     # harness.CompareOptions: compare()'s options as one value
"""

import importlib

# Names load on first use (PEP 562), so `python -m harness list` and the lazy pair declarations
# (harness.catalog) run without importing torch.
_EXPORTS = {
    "compare": "harness.api", "compare_pair": "harness.api",
    "DEFAULT_TOLERANCES": "harness.metrics", "Metrics": "harness.metrics", "Tolerance": "harness.metrics",
    "measure": "harness.metrics",
    "CompareOptions": "harness.options",
    "Call": "harness.pairs", "Pair": "harness.pairs", "as_call": "harness.pairs", "get_pair": "harness.pairs",
    "list_pairs": "harness.pairs", "randomize_": "harness.pairs", "register": "harness.pairs",
    "ParityReport": "harness.report",
    "Record": "harness.trace", "Tracer": "harness.trace",
    "Trace": "harness.tracefile", "load_trace": "harness.tracefile",
    "WeightMap": "harness.weights", "load_weight_map": "harness.weights", "map_weights": "harness.weights",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")  # a submodule: harness.pairs, harness.trace...
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "Trace", "load_trace",
    "WeightMap", "load_weight_map", "map_weights",
    "Call", "CompareOptions", "DEFAULT_TOLERANCES", "Metrics", "Pair", "ParityReport", "Record", "Tolerance",
    "Tracer", "as_call", "compare", "compare_pair", "get_pair", "list_pairs", "measure",
    "randomize_", "register",
]
