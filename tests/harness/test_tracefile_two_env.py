"""Record once, compare elsewhere: a process that cannot import timm compares a candidate with a
recorded reference and reaches the live comparison's verdict and culprit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness import get_pair
from harness.api import compare_pair
from harness.tracefile import record_pair

# An injected bug that leaves the weights alone (the fingerprint would refuse changed weights):
# the last LayerNorm-like module of the candidate gets another eps.
CASES = {"convnext_tiny_stage3_block": "norm", "rope_mixed_vit_small_d2_nonsquare": "blocks.1.norm2"}

CHILD = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoReferenceLibraries(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("timm", "transformers"):
                raise ImportError(f"{name} is not installed in this environment")

    sys.meta_path.insert(0, NoReferenceLibraries())
    import torch, harness

    results = {}
    for name, (model_file, trace_file) in json.loads(sys.argv[1]).items():
        candidate = torch.load(model_file, weights_only=False)
        report = harness.compare(candidate, harness.load_trace(trace_file))
        results[name] = {"passed": report.passed, "first_divergence": report.first_divergence,
                         "culprit": report.culprit, "rows": [[r.key, r.status] for r in report.rows],
                         "diagnosis": [[f["argument"], f["candidate"], f["reference"]] for f in report.diagnosis]}
    results["imported"] = sorted(m for m in sys.modules if m.split(".")[0] in ("timm", "transformers"))
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def two_environments(tmp_path_factory):
    """(live reports, reports from the process without timm) for every case."""
    folder = tmp_path_factory.mktemp("two_env")
    live, files = {}, {}
    for name, module in CASES.items():
        pair = get_pair(name)
        candidate, _ = pair.build(dtype=torch.float64)
        candidate.get_submodule(module).eps = 1e-2
        live[name] = compare_pair(name, candidate=candidate, dtype=torch.float64)
        trace = record_pair(name, "reference", folder / f"{name}.trace", weights=False)
        torch.save(candidate, folder / f"{name}.pt")
        files[name] = [str(folder / f"{name}.pt"), str(trace)]
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(files)], capture_output=True, text=True,
                          cwd=root, env={"OMP_NUM_THREADS": "1", "PATH": "", "PYTHONPATH": str(root)}, timeout=600)
    assert done.returncode == 0, f"the comparison without timm failed:\n{done.stderr[-3000:]}"
    return live, json.loads(done.stdout.strip().splitlines()[-1])


def test_the_other_environment_never_imports_the_reference_libraries(two_environments):
    _, elsewhere = two_environments
    assert elsewhere["imported"] == [], f"the candidate-side process imported {elsewhere['imported']}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_recorded_reference_gives_the_live_verdict_and_culprit(two_environments, name):
    live, elsewhere = two_environments
    got, want = elsewhere[name], live[name]
    assert (got["passed"], got["first_divergence"], got["culprit"]) == \
        (want.passed, want.first_divergence, want.culprit) == (False, CASES[name], CASES[name]), (
        f"{name}: live {want.passed}/{want.first_divergence}/{want.culprit}, from the trace {got}")
    assert got["rows"] == [[r.key, r.status] for r in want.rows]


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_recorded_reference_still_explains_the_eps_bug(two_environments, name):
    live, elsewhere = two_environments
    wanted = {("eps", f["candidate"], f["reference"]) for f in live[name].diagnosis if f["argument"] == "eps"}
    got = {tuple(f) for f in elsewhere[name]["diagnosis"]}
    assert wanted == {("eps", 1e-2, 1e-6)} and wanted <= got, (
        f"{name}: live diagnosis {live[name].diagnosis}, from the trace {elsewhere[name]['diagnosis']}")
