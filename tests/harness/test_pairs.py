"""harness.pairs building: copied or shared weights, and rebuilding the last pair from its kept weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import harness
from harness.pairs import reuse_references
from harness_toys import TOY


def _memory(tensors) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def _normed() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))


NORMED = harness.Pair(name="toy_normed", candidate=_normed, reference=_normed, convert=dict,
                      make_inputs=lambda g: torch.randn(3, 4, generator=g))


class Periods(nn.Module):
    """A constructor that computes a non-persistent buffer, as RoPE modules do."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.register_buffer("periods", torch.arange(4.0) + 1, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) * self.periods


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def _pair(name: str, factory) -> harness.Pair:
    return harness.Pair(name=name, candidate=factory, reference=factory, convert=dict,
                        make_inputs=lambda g: torch.randn(3, 4, generator=g))


@pytest.fixture
def reuse():
    before = reuse_references(True)
    yield
    reuse_references(before)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_build_copies_the_weights_unless_asked_to_share_them():
    candidate, reference = TOY.build(dtype=torch.float64)
    with torch.no_grad():
        candidate.blocks[0].fc1.weight.add_(1.0)  # a user's injected bug stays on the candidate
    assert not torch.equal(candidate.blocks[0].fc1.weight, reference.blocks[0].fc1.weight)


def test_shared_build_holds_one_copy_of_the_weights():
    candidate, reference = NORMED.build(dtype=torch.float64, share_weights=True)
    assert _memory(candidate.parameters()) == _memory(reference.parameters())


def test_shared_build_gives_the_candidate_its_own_buffers():
    # a train-mode forward updates running statistics in place: they must not leak across
    candidate, reference = NORMED.build(dtype=torch.float64, share_weights=True)
    assert len(list(candidate.buffers())) == 3 and not _memory(candidate.buffers()) & _memory(reference.buffers())


def test_shared_and_copied_builds_hold_the_same_values():
    shared, _ = NORMED.build(dtype=torch.float64, share_weights=True)
    copied, _ = NORMED.build(dtype=torch.float64)
    _assert_same_state(shared, copied)


@pytest.mark.parametrize("first, second", [(torch.float32, torch.float64), (torch.float64, torch.float32),
                                           (torch.float32, torch.float32)])
def test_a_rebuilt_reference_is_bitwise_a_fresh_build(reuse, first, second):
    TOY.build_reference(dtype=first)
    rebuilt = TOY.build_reference(dtype=second)
    reuse_references(False)
    _assert_same_state(rebuilt, TOY.build_reference(dtype=second))
    assert not rebuilt.training


def test_a_rebuilt_reference_skips_the_upstream_constructor_on_real_memory(reuse):
    built_on: list[torch.device] = []

    def factory() -> nn.Module:
        model = _normed()
        built_on.append(next(model.parameters()).device)
        return model

    pair = _pair("toy_counted", factory)
    pair.build_reference()
    pair.build_reference(dtype=torch.float64)
    assert [d.type for d in built_on] == ["cpu", "meta"]


def test_changing_a_built_reference_does_not_change_the_next_build(reuse):
    first = NORMED.build_reference()
    kept = _state(first)
    with torch.no_grad():
        first[0].weight.add_(1.0)
    second = NORMED.build_reference()
    assert all(torch.equal(kept[k], v) for k, v in second.state_dict().items())


@pytest.mark.parametrize("factory", [Periods, Tied], ids=["non-persistent-buffer", "tied-weights"])
def test_a_reference_the_state_dict_cannot_rebuild_is_built_for_real(reuse, factory):
    built_on: list[str] = []

    def counted() -> nn.Module:
        model = factory()
        built_on.append(next(model.parameters()).device.type)
        return model

    pair = harness.Pair(name=f"toy_{factory.__name__.lower()}", candidate=factory, reference=counted,
                        convert=dict, make_inputs=lambda g: torch.randn(3, 4, generator=g))
    pair.build_reference()
    rebuilt = pair.build_reference(dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64)
    reuse_references(False)
    fresh = pair.build_reference(dtype=torch.float64)
    assert torch.equal(rebuilt(x), fresh(x))
    assert built_on == ["cpu", "cpu", "cpu"]  # never tried on meta: nothing was kept
    if factory is Tied:
        assert rebuilt.a.weight is rebuilt.b.weight


def test_another_pair_is_not_rebuilt_from_the_last_ones_weights(reuse):
    TOY.build_reference()
    reference = NORMED.build_reference()
    reuse_references(False)
    _assert_same_state(reference, NORMED.build_reference())


def test_reuse_references_takes_a_bool_and_returns_the_setting_it_replaced(reuse):
    with pytest.raises(TypeError, match="reuse_references"):
        reuse_references("yes")
    assert reuse_references(False) is True and reuse_references(True) is False


class WritesItsWeight(nn.Linear):
    """A candidate bug: each forward scales its own weight in place first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.weight.mul_(1.001)
        return super().forward(x)


def test_compare_pair_judges_a_forward_that_writes_its_weights_on_separate_copies():
    pair = harness.Pair(name="toy_writes_weight", candidate=lambda: WritesItsWeight(4, 4),
                        reference=lambda: nn.Linear(4, 4), convert=dict,
                        make_inputs=lambda g: torch.randn(2, 4, generator=g))
    report = harness.compare_pair(pair, dtype=torch.float64)
    assert not report.passed and report.culprit == "<root>", report.format()


def test_compare_pair_builds_once_when_no_forward_writes_weights():
    built: list[int] = []

    def reference() -> nn.Module:
        built.append(1)
        return _normed()

    before = reuse_references(False)
    try:
        pair = harness.Pair(name="toy_built_once", candidate=_normed, reference=reference, convert=dict,
                            make_inputs=lambda g: torch.randn(3, 4, generator=g))
        assert harness.compare_pair(pair, dtype=torch.float64).passed
    finally:
        reuse_references(before)
    assert len(built) == 1
