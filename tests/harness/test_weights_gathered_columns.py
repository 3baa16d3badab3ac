"""An attention that builds its bias ``(heads, N, N)`` by indexing the columns of a table ``(heads,
M)`` with a 2-D index (LeViT's and EfficientFormer's ``biases[:, idxs]``), against a port keeping the
bias whole: the map takes the bias from the table through a ``gather`` step along dim 1 and the
reshape to the index's shape, whether the table is indexed ``[:, idx]`` or ``[..., idx]``, and even
where the reference keeps the gathered bias in a cache filled by an earlier eval forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness
from helpers import transferred
from port_toys import BiasedAttention, WholeBiasAttention, randomized

C, HEADS, SIDE = BiasedAttention.channels, BiasedAttention.heads, 3
N = SIDE * SIDE


def _offsets() -> torch.Tensor:
    """For each pair of positions of a ``SIDE x SIDE`` grid, the column of their absolute offset."""
    yy, xx = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
    yy, xx = yy.flatten(), xx.flatten()
    return (yy[:, None] - yy[None]).abs() * SIDE + (xx[:, None] - xx[None]).abs()


class _Columns(BiasedAttention):
    """``table[:, index]``; with ``cached``, kept after the first eval forward as timm does."""

    def __init__(self, ellipsis: bool = False, cached: bool = False) -> None:
        super().__init__()
        self.ellipsis, self.cached = ellipsis, cached
        self.table = nn.Parameter(torch.zeros(HEADS, N))
        self.register_buffer("index", _offsets(), persistent=False)
        self.bias_cache: dict[str, torch.Tensor] = {}

    def gathered(self) -> torch.Tensor:
        return self.table[..., self.index] if self.ellipsis else self.table[:, self.index]

    def bias(self) -> torch.Tensor:
        if not self.cached or self.training:
            return self.gathered()
        if "bias" not in self.bias_cache:
            self.bias_cache["bias"] = self.gathered()
        return self.bias_cache["bias"]


def _tokens() -> torch.Tensor:
    return torch.randn(2, N, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _gather() -> list:
    return [{"op": "gather", "dim": 1, "index": _offsets().reshape(-1).tolist()},
            {"op": "reshape", "shape": [HEADS, N, N]}]


@pytest.mark.parametrize("ellipsis", [False, True], ids=["slice", "ellipsis"])
def test_a_bias_kept_whole_takes_the_columns_the_reference_gathers(ellipsis):
    _, _, weights = transferred(randomized(WholeBiasAttention(N), 1), randomized(_Columns(ellipsis), 2), _tokens())
    entry = {e.candidate: e for e in weights.entries}.get("rel_bias")
    assert weights.verified and entry is not None and entry.reference == ("table",) \
        and list(entry.steps) == _gather(), \
        f"expected rel_bias <- table gathered along dim 1 and reshaped to (heads, N, N), verified; got:\n{weights}"


def test_a_port_keeping_the_bias_whole_passes_against_gathered_columns():
    candidate, reference, weights = transferred(randomized(WholeBiasAttention(N), 1), randomized(_Columns(), 2), _tokens())
    report = harness.compare(candidate, reference, _tokens(), weights=weights)
    assert report.passed, report.format()


def test_a_bias_cached_by_an_earlier_forward_is_still_traced_to_its_table():
    reference = randomized(_Columns(cached=True), 2)
    with torch.no_grad():
        reference(_tokens())  # fills the cache: later forwards read no table
    candidate, reference, weights = transferred(randomized(WholeBiasAttention(N), 1), reference, _tokens())
    assert weights.verified and "table" not in weights.unmatched["reference"], \
        f"expected rel_bias <- table although the reference's forward reads its cache; got:\n{weights}"


def test_the_cache_a_model_holds_is_left_as_it_was_by_the_map():
    reference = randomized(_Columns(cached=True), 2)
    with torch.no_grad():
        reference(_tokens())
    held = reference.bias_cache["bias"]
    harness.map_weights(randomized(WholeBiasAttention(N), 1), reference, _tokens(), verify=False)
    assert reference.bias_cache.get("bias") is held, "map_weights should leave the model's cache holding what it held"


def test_the_table_reads_back_from_a_bias_kept_whole():
    candidate, reference, weights = transferred(randomized(WholeBiasAttention(N), 1), randomized(_Columns(), 2), _tokens())
    back = weights.to_reference(dict(candidate.state_dict()))
    assert torch.equal(back["table"], reference.table), "reading the map backward should give back the table"
