"""Results of real toy comparisons, and run stamps, for the tests of report pages, the dashboard and
the report CLI."""

from __future__ import annotations

import copy
import functools
from typing import Any, Iterable

import torch

import harness
from harness import runs
from harness_toys import TOY, drop_residual


@functools.cache
def _toy_results() -> tuple[dict[str, Any], dict[str, Any]]:
    candidate, _ = TOY.build(dtype=torch.float64)
    drop_residual(candidate.blocks[1])
    return (harness.compare_pair(TOY, dtype=torch.float64).to_dict(),
            harness.compare_pair(TOY, candidate=candidate, dtype=torch.float64).to_dict())


def toy_results() -> tuple[dict[str, Any], dict[str, Any]]:
    """(passing, failing) report results of the toy pair at float64, as it is and with block 1's
    residual dropped: computed once, handed out as copies a test may change."""
    return copy.deepcopy(_toy_results())


def stamp(*, time: str, commit: str = "c1", selection: str = "-k toy", shard: str | None = None,
          why_partial: Iterable[str] = ()) -> dict[str, Any]:
    """A run stamp (:func:`harness.runs.run_stamp`) with a fixed time."""
    return dict(runs.run_stamp(commit=commit, selection=selection, shard=shard, why_partial=why_partial), time=time)
