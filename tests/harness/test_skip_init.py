"""Specification of :mod:`harness.skip_init`: a reference is built without the upstream
initialization of the matrices its re-draw replaces, and with it wherever skipping would show."""

from __future__ import annotations

import torch
from torch import nn

from harness import Pair, randomize_
from harness.skip_init import _NEEDS_FULL_INIT, build_without_overwritten_init
from helpers import assert_same_state


class Upstream(nn.Module):
    """A constructor in the upstream style: layers, then an init pass over them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.norm = nn.LayerNorm(5)
        self.scale = nn.Parameter(torch.full((5,), 1e-6))
        self.register_buffer("table", torch.arange(10.0).reshape(2, 5))
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)


class ReadsItsMatrix(nn.Module):
    """A weight-norm style constructor: a vector computed from a matrix it initialized."""

    def __init__(self) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.empty(4, 3))
        nn.init.normal_(self.v)
        self.g = nn.Parameter(self.v.detach().norm(dim=1))


def _construct(factory):
    def construct() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return factory()
    return construct


def _redraw(model: nn.Module) -> None:
    randomize_(model, torch.Generator().manual_seed(0))


def _full_build(factory, redraw=_redraw) -> nn.Module:
    model = _construct(factory)()
    redraw(model)
    return model


def test_the_constructor_never_initializes_a_matrix_the_redraw_replaces() -> None:
    seen: list[torch.Tensor] = []

    def redraw(model: nn.Module) -> None:
        seen.append(model.fc.weight.detach().clone())
        _redraw(model)

    build_without_overwritten_init("upstream-seen", _construct(Upstream), redraw)
    assert torch.isnan(seen[0]).all(), f"fc.weight reached the re-draw initialized: {seen[0]}"


def test_vectors_and_buffers_keep_their_upstream_values() -> None:
    built = build_without_overwritten_init("upstream-vectors", _construct(Upstream), lambda model: None)
    assert torch.equal(built.norm.weight, torch.ones(5)) and torch.equal(built.scale, torch.full((5,), 1e-6))
    assert torch.equal(built.table, torch.arange(10.0).reshape(2, 5)) and torch.equal(built.fc.bias, torch.zeros(5))


def test_a_build_gives_bitwise_the_same_weights_every_time() -> None:
    first = build_without_overwritten_init("upstream-twice", _construct(Upstream), _redraw)
    again = build_without_overwritten_init("upstream-twice", _construct(Upstream), _redraw)
    assert_same_state(again.state_dict(), first.state_dict())


def test_matrices_get_exactly_the_redraw_of_a_full_build() -> None:
    built = build_without_overwritten_init("upstream-matrices", _construct(Upstream), _redraw)
    assert torch.equal(built.fc.weight, _full_build(Upstream).fc.weight)


def test_a_constructor_that_reads_a_skipped_matrix_is_built_with_its_full_initialization() -> None:
    built = build_without_overwritten_init("reads-its-matrix", _construct(ReadsItsMatrix), _redraw)
    assert "reads-its-matrix" in _NEEDS_FULL_INIT
    assert_same_state(built.state_dict(), _full_build(ReadsItsMatrix).state_dict())


def test_a_redraw_that_leaves_a_matrix_alone_is_given_the_full_initialization() -> None:
    def vectors_only(model: nn.Module) -> None:
        with torch.no_grad():
            model.fc.bias.add_(1.0)

    built = build_without_overwritten_init("vectors-only", _construct(Upstream), vectors_only)
    assert not torch.isnan(built.fc.weight).any(), "a matrix the re-draw did not replace was left as NaN"
    assert_same_state(built.state_dict(), _full_build(Upstream, vectors_only).state_dict())


def test_a_pair_without_randomize_keeps_its_upstream_matrices() -> None:
    pair = Pair(name="upstream-as-is", candidate=Upstream, reference=Upstream, convert=dict,
                make_inputs=lambda g: torch.randn(1, 6, generator=g), randomize=False)
    reference = pair.build_reference(dtype=torch.float32)
    assert torch.equal(reference.fc.weight, _construct(Upstream)().fc.weight)


def test_a_pair_built_without_the_skipped_initialization_holds_no_nan_and_matches_its_candidate() -> None:
    pair = Pair(name="upstream-pair", candidate=Upstream, reference=Upstream, convert=dict,
                make_inputs=lambda g: torch.randn(1, 6, generator=g))
    candidate, reference = pair.build(dtype=torch.float64)
    assert not any(torch.isnan(p).any() for p in reference.parameters())
    assert_same_state(candidate.state_dict(), reference.state_dict())
