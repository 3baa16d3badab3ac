"""A weight map is inferred only between models of one dtype, as a comparison is: a float32
candidate against a float64 reference fails up front with the dtypes named, not inside a forward
that receives the other side's inputs."""

from __future__ import annotations

import pytest
from torch import nn

import harness
from port_toys import randomized, tokens


def test_map_weights_of_models_of_two_dtypes_says_both_in_one_line():
    candidate, reference = randomized(nn.Linear(16, 8), 1).float(), randomized(nn.Linear(16, 8), 2)
    with pytest.raises(TypeError) as raised:
        harness.map_weights(candidate, reference, tokens())
    message = str(raised.value)
    assert "torch.float32" in message and "torch.float64" in message and "\n" not in message, (
        f"expected one line naming float32 and float64, got {type(raised.value).__name__}: {message}")
