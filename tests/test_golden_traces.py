"""Golden traces: every default-suite pair's reference, layer by layer, against its committed sketch.

A fresh float64 run of each reference is sketched (:mod:`harness.sketch`) and diffed against
``tests/goldens/traces/<pair>.json``: a library upgrade or a changed pair definition that moves
any layer fails here, naming the layers in execution order with their estimated change.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from harness import get_pair, list_pairs
from harness.report import atomic_write_text
from harness.sketch import diff_golden, dump_golden, golden_trace, load_golden

pytestmark = pytest.mark.golden

DIRECTORY = Path(__file__).parent / "goldens" / "traces"
DEFAULT_PAIRS = [n for n in list_pairs() if "nightly" not in get_pair(n).tags]
BUDGET_PER_LAYER = 4096
BUDGET_TOTAL = 5_000_000
# Building a reference of this many parameters (randomizing and casting them to float64) costs
# more than the other golden checks together; those run with --nightly. The timm modules they
# use are covered in the default run by convnext_tiny and the stage-3 block pairs.
HEAVY_PARAMETERS = 40_000_000


def _recorded_parameters(name: str) -> int:
    path = DIRECTORY / f"{name}.json"
    if not path.exists():
        return 0
    with open(path, encoding="utf-8") as f:
        head = f.readline().rstrip().rstrip(",") + "}"
    try:
        return json.loads(head)["weights"]["count"]
    except (ValueError, KeyError):
        return 0


def _marks(name: str):
    heavy = _recorded_parameters(name) > HEAVY_PARAMETERS
    return pytest.param(name, marks=[pytest.mark.nightly] if heavy else [])


class GoldenTraceUpdated(UserWarning):
    """A golden trace was rewritten with --update-goldens (or library versions changed while no
    layer moved); the message says what changed."""


def _fresh(name: str, candidate: torch.nn.Module | None = None, rounding: bool = False) -> dict:
    """The golden-trace document of the pair's reference, or of ``candidate`` keyed by reference names;
    ``rounding``: with each layer's distance from a run whose float32 operations keep float64."""
    pair = get_pair(name)
    if candidate is None:
        model, call, outputs, rename = (pair.build_reference(dtype=torch.float64), pair.reference_call,
                                        pair.reference_outputs, ())
    else:
        model, call, outputs, rename = candidate, pair.candidate_call, pair.candidate_outputs, pair.rename
    return golden_trace(model, pair.inputs(dtype=torch.float64), name=name, model_call=call, outputs=outputs,
                        rename=rename, rounding=rounding)


@pytest.fixture
def golden_trace_check(request: pytest.FixtureRequest):
    """``check(name, make)``: diff ``make(rounding)`` against its golden; write it when missing or
    updating. A fresh run that moved is made again with its own rounding (``make(True)``): where the
    reference computes in float32, that rounding differs between machines and is allowed for."""
    update = request.config.getoption("--update-goldens")

    def check(name: str, make) -> None:
        path = DIRECTORY / f"{name}.json"
        regenerate = f"pytest tests/test_golden_traces.py -m golden -k '{name}' --update-goldens"
        fresh = make(update or not path.exists())
        if path.exists():
            golden = load_golden(path.read_text(encoding="utf-8"), source=str(path))
            found = diff_golden(fresh, golden)
            if found.changed and "rounding" not in fresh:
                fresh = make(True)
                found = diff_golden(fresh, golden)
        else:
            found = None
        if update or found is None:
            atomic_write_text(path, dump_golden(fresh))
            if found is None:
                pytest.fail(f"golden trace {path} did not exist; it was written now from this run "
                            f"({len(fresh['layers'])} layers): review and commit it", pytrace=False)
            if found.changed or found.versions:
                warnings.warn(GoldenTraceUpdated(f"{path} rewritten; what changed:\n{found.format()}"))
            return
        if not found.changed and found.versions:
            warnings.warn(GoldenTraceUpdated(f"{name}: no layer moved, but {found.format()}"))
        if found.changed:
            pytest.fail(f"{name}: the reference no longer matches its golden trace {path}\n{found.format()}\n"
                        f"If the change is intended, regenerate with: {regenerate}", pytrace=False)

    return check


@pytest.mark.parametrize("name", [_marks(n) for n in DEFAULT_PAIRS])
def test_reference_matches_its_golden_trace(name: str, golden_trace_check) -> None:
    golden_trace_check(name, lambda rounding: _fresh(name, rounding=rounding))


def test_every_default_pair_has_a_golden_trace_within_the_size_budget() -> None:
    sizes = {n: (DIRECTORY / f"{n}.json") for n in DEFAULT_PAIRS}
    missing = [n for n, p in sizes.items() if not p.exists()]
    assert not missing, f"no golden trace for {missing}; write them with: pytest -m golden --update-goldens"
    over = []
    for name, path in sizes.items():
        longest = max(len(line.encode()) for line in path.read_text(encoding="utf-8").splitlines())
        if longest > BUDGET_PER_LAYER:
            over.append(f"{name}: a layer line of {longest} bytes")
    total = sum(p.stat().st_size for p in sizes.values())
    assert not over and total <= BUDGET_TOTAL, (
        f"golden traces over budget ({BUDGET_PER_LAYER} bytes per layer, {BUDGET_TOTAL} in total): "
        f"{over or ''} total {total} bytes")


def test_a_perturbed_candidate_weight_is_named_as_the_first_moved_layer() -> None:
    name = "convnext_tiny_stage3_block"
    pair = get_pair(name)
    candidate, _ = pair.build(dtype=torch.float64)
    target = next(n for n, m in candidate.named_modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        candidate.get_submodule(target).weight.mul_(1.001)
    from harness.align import apply_rename

    golden = load_golden((DIRECTORY / f"{name}.json").read_text(encoding="utf-8"), source=name)
    found = diff_golden(_fresh(name, candidate), golden, common_only=True)
    expected = f"{apply_rename(target, pair.rename)}#0"
    assert found.moved and found.moved[0].key == expected, (
        f"perturbing {target} should make {expected} the first moved layer; the diff says:\n{found.format()}")
