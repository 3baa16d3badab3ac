"""A window attention that builds its relative-position bias ``(heads, N, N)`` by gathering rows of
a table of ``(2w - 1)^2`` rows through an index (timm's Swin), against a port keeping that bias whole
as its own parameter: the map takes the bias from the table through a ``gather`` step (and the
re-layouts the reference applies after it), verifies it, and reads it backward, each table row from
the first place that took it. The other way round (the port gathers, the reference keeps the bias
whole) the table is read back from the bias."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness
from helpers import transferred
from port_toys import BiasedAttention, WholeBiasAttention, randomized

C, HEADS, WINDOW = BiasedAttention.channels, BiasedAttention.heads, 3
N = WINDOW * WINDOW


def _relative_index() -> torch.Tensor:
    """For each pair of window positions, the row of their offset in a ``(2w - 1)^2``-row table."""
    coords = torch.stack(torch.meshgrid(torch.arange(WINDOW), torch.arange(WINDOW), indexing="ij")).flatten(1)
    offsets = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + WINDOW - 1
    return offsets[..., 0] * (2 * WINDOW - 1) + offsets[..., 1]


class _Gathering(BiasedAttention):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros((2 * WINDOW - 1) ** 2, HEADS))
        self.register_buffer("index", _relative_index(), persistent=False)

    def bias(self) -> torch.Tensor:
        return self.table[self.index.view(-1)].view(N, N, -1).permute(2, 0, 1).contiguous().unsqueeze(0)


class _NoBias(BiasedAttention):
    def bias(self) -> float:
        return 0.0


def _windows() -> torch.Tensor:
    return torch.randn(4, N, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture(scope="module")
def port():
    return transferred(randomized(WholeBiasAttention(N), 1), randomized(_Gathering(), 2), _windows())


def test_a_bias_kept_whole_takes_the_reference_table_through_its_gather(port):
    _, _, weights = port
    entry = {e.candidate: e for e in weights.entries}["rel_bias"]
    assert weights.verified and entry.reference == ("table",) and entry.steps[0] == \
        {"op": "gather", "dim": 0, "index": _relative_index().reshape(-1).tolist()}, \
        f"expected rel_bias <- table gathered through the reference's index, verified; got:\n{weights}"


def test_a_port_keeping_the_bias_whole_passes(port):
    candidate, reference, weights = port
    report = harness.compare(candidate, reference, _windows(), weights=weights)
    assert report.passed, report.format()


def test_the_bias_read_backward_gives_the_reference_its_table(port):
    candidate, reference, weights = port
    back = weights.to_reference(dict(candidate.state_dict()))
    assert torch.equal(back["table"], reference.table), "reading the map backward should give back the table"


def test_a_bias_whose_places_sharing_a_row_differ_is_refused_read_backward(port):
    candidate, _, weights = port
    state = {k: v.clone() for k, v in candidate.state_dict().items()}
    state["rel_bias"][0, 0, 0] += 1.0
    with pytest.raises(ValueError, match=r"rel_bias differs from what table read back gives it \(places taking one "
                                         r"row of it hold other values\)"):
        weights.to_reference(state)


def test_a_table_the_port_gathers_takes_a_reference_bias_kept_whole():
    reference, source = randomized(WholeBiasAttention(N), 2), randomized(_Gathering(), 3)
    with torch.no_grad():  # a bias that is some table gathered, as a converted checkpoint holds
        reference.rel_bias.copy_(source.bias()[0])
    candidate, reference, weights = transferred(randomized(_Gathering(), 1), reference, _windows())
    report = harness.compare(candidate, reference, _windows(), weights=weights)
    assert weights.verified and report.passed and "table" not in weights.unmatched["candidate"], \
        f"expected table <- rel_bias read back through the port's index, verified; got:\n{weights}"


def test_a_gathered_table_without_counterpart_says_how_it_is_used():
    weights = harness.map_weights(randomized(_NoBias(), 1), randomized(_Gathering(), 2), _windows(), verify=False)
    assert weights.reason("reference", "table") == \
        "a table the forward gathers rows of through an index and adds as (1, 2, 9, 9): no leftover tensor of the " \
        "other side holds that layout", str(weights)


def test_a_saved_map_with_a_gather_loads_verified_and_transfers_the_same_bias(port, tmp_path):
    candidate, reference, weights = port
    loaded = harness.load_weight_map(weights.save(tmp_path / "map.json"))
    fresh = WholeBiasAttention(N).double().eval()
    loaded.transfer(reference, fresh)
    assert loaded.verified and torch.equal(fresh.rel_bias, candidate.rel_bias), f"the map read back:\n{loaded}"


def test_gradients_of_a_bias_kept_whole_are_not_held_against_its_gathered_table(port):
    candidate, reference, weights = port
    report = harness.compare(candidate, reference, _windows(), weights=weights, backward=True)
    compared = [p.candidate for p in report.backward.parameters]
    assert report.backward.passed and "rel_bias" not in compared, report.format()
    assert any("rel_bias" in note and "gather" in note for note in report.backward.notes), report.backward.notes
