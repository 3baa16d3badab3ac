"""A model's own forward that raises, whatever the exception's type, is said as that side's error with
the inputs it was given (shapes and dtypes), its own exception chained; what the caller must fix in
the harness's arguments (a call function taking other arguments) is left as raised."""

import pytest
import torch
from torch import nn

import harness
from harness.guards import ForwardFailed

F64 = torch.float64


class ImageNet(nn.Module):
    """A conv and a BatchNorm2d: a batch of images ``(B, 3, H, W)``, nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Embedding(nn.Module):
    """Token ids and a float scale: inputs of two dtypes."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(10, 4)

    def forward(self, ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.table(ids) * scale


def _failure(candidate: nn.Module, reference: nn.Module, *inputs: torch.Tensor) -> ForwardFailed:
    with pytest.raises(ForwardFailed) as raised:
        harness.compare(candidate, reference, inputs if len(inputs) > 1 else inputs[0])
    return raised.value


def test_a_value_error_from_the_models_own_code_names_the_side_and_the_input_shapes():
    image_without_batch = torch.randn(3, 8, 8, dtype=F64)
    error = _failure(ImageNet().double().eval(), ImageNet().double().eval(), image_without_batch)
    message = str(error)
    for part in ("the candidate's forward raised ValueError: expected 4D input (got 3D input)",
                 "inputs: args.0 (3, 8, 8)"):
        assert part in message, f"the error does not say {part!r}: {message}"
    assert error.side == "candidate", f"the error names side {error.side!r}"


def test_the_models_own_value_error_stays_chained():
    error = _failure(ImageNet().double().eval(), ImageNet().double().eval(), torch.randn(3, 8, 8, dtype=F64))
    assert isinstance(error.__cause__, ValueError), f"the forward's own exception is not chained: {error.__cause__!r}"


def test_the_failing_forward_names_each_inputs_dtype_where_they_differ():
    ids, scale = torch.tensor([[1, 12]]), torch.ones(1, dtype=F64)  # id 12 is outside the table
    message = str(_failure(Embedding().double(), Embedding().double(), ids, scale))
    assert "dtypes (args.0 int64, args.1 float64)" in message, f"the inputs' dtypes are not named: {message}"


def test_the_failing_forward_names_the_one_dtype_all_inputs_share():
    message = str(_failure(ImageNet().double().eval(), ImageNet().double().eval(), torch.randn(3, 8, 8, dtype=F64)))
    assert "dtypes (float64)" in message, f"the inputs' dtype is not named: {message}"


def test_a_call_function_that_takes_other_arguments_is_the_callers_error_as_raised():
    x = torch.randn(1, 3, 8, 8, dtype=F64)
    model = ImageNet().double().eval()
    with pytest.raises(TypeError) as raised:
        harness.compare(model, ImageNet().double().eval(), x, candidate_call=lambda model: model(x))
    assert not isinstance(raised.value, ForwardFailed) and "lambda" in str(raised.value), \
        f"a candidate_call of the wrong signature is blamed on the model: {raised.value!r}"
