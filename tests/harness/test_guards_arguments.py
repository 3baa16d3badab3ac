"""Inputs that one side's forward cannot take (keywords it does not accept, a missing argument) are
a usage error said in one line: which side, what it was given, and how to call it another way."""

import pytest
import torch
from torch import nn

import harness
from harness.guards import ForwardFailed


class TakesPixelValues(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_values)


class TakesX(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class RaisesTypeErrorInside(TakesX):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x, "not a tensor")


def _inputs() -> dict:
    return {"pixel_values": torch.randn(2, 4, dtype=torch.float64)}


@pytest.mark.parametrize("entry", [harness.map_weights, harness.compare])
def test_keyword_inputs_the_reference_does_not_take_name_the_side_the_keywords_and_reference_call(entry):
    with pytest.raises(TypeError) as raised:
        entry(TakesPixelValues().double(), TakesX().double(), _inputs())
    message = str(raised.value)
    for part in ("the reference (TakesX)", "pixel_values", "forward(x)", "reference_call="):
        assert part in message, f"the error does not say {part!r}: {message}"


def test_a_type_error_raised_inside_a_forward_that_takes_the_inputs_is_left_as_the_models_own():
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(ForwardFailed) as raised:
        harness.compare(RaisesTypeErrorInside().double(), TakesX().double(), x)
    assert "_call=" not in str(raised.value), f"the model's own error is blamed on its arguments: {raised.value}"
    assert isinstance(raised.value.__cause__, TypeError), f"the model's own error is not chained: {raised.value!r}"
