"""A yes or a no on whether two tensors hold the same values in some layout: the first layout that
holds them answers, and values that no layout can bring together answer no."""

from __future__ import annotations

import torch

from harness.adapters import agreeing_layout
from harness.metrics import tolerance_for

TOL = tolerance_for(torch.float64)


def agrees_in_a_layout(candidate: torch.Tensor, reference: torch.Tensor, tol) -> bool:
    return agreeing_layout(candidate, reference, tol, first=True) is not None


def _map() -> torch.Tensor:
    return torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_tokens_agree_with_the_map_they_were_flattened_from():
    feature_map = _map()
    tokens = feature_map.flatten(2).transpose(1, 2) * (1 + 1e-13)  # rounded apart, not bitwise equal
    assert agrees_in_a_layout(tokens, feature_map, TOL)


def test_tokens_of_another_map_agree_in_no_layout():
    assert not agrees_in_a_layout((_map() + 1e-3).flatten(2).transpose(1, 2), _map(), TOL)


def test_tensors_of_one_shape_are_compared_as_they_are():
    feature_map = _map()
    assert not agrees_in_a_layout(feature_map.transpose(2, 3), feature_map, TOL)
