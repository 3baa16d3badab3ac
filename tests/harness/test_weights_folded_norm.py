"""A port that folds each batch norm into ``x * scale + shift`` (as exported and Flax ports do) keeps
two tensors where its reference keeps four. The map expresses the folding (``scale = weight /
sqrt(var + eps)``, ``shift = bias - mean * scale``) as a ``fold_norm`` step over all four, verifies
it, saves and loads it, and refuses to read it backward: the four cannot be recovered from two."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import harness
from harness.keymap import check_step
from harness.weightmap import load_weight_map
from helpers import transferred
from port_toys import randomized

C = 6


class _Folded(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("shift", torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale[:, None, None] + self.shift[:, None, None]


class _Port(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, C, 3, padding=1, bias=False), _Folded(C)
        self.conv2, self.bn2 = nn.Conv2d(C, C, 3, padding=1, bias=False), _Folded(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


def _reference() -> nn.Module:
    return randomized(nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C, eps=1e-3), nn.ReLU(),
                                    nn.Conv2d(C, C, 3, padding=1, bias=False), nn.BatchNorm2d(C, eps=1e-3)), 2)


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture(scope="module")
def port():
    return transferred(_Port().double().eval(), _reference(), _images())


def test_a_batch_norm_folded_into_scale_and_shift_is_mapped_as_the_fold_and_verified(port):
    _, _, weights = port
    entry = {e.candidate: e for e in weights.entries}["bn1.scale"]
    assert weights.verified and entry.reference == ("1.weight", "1.bias", "1.running_mean", "1.running_var") \
        and entry.steps[0] == {"op": "fold_norm", "part": "scale", "eps": 1e-3,
                               "of": ["weight", "bias", "running_mean", "running_var"]}, \
        f"expected bn1.scale <- the fold of norm 1's four tensors (eps 1e-3), verified; got:\n{weights}"


def test_every_tensor_of_a_folded_norm_counts_as_fed(port):
    _, _, weights = port
    assert weights.unmatched["reference"] == [], \
        f"no reference tensor should be left without a counterpart, got {weights.unmatched['reference']}:\n{weights}"


def test_a_port_folding_its_norms_passes(port):
    candidate, reference, weights = port
    report = harness.compare(candidate, reference, _images(), weights=weights)
    assert report.passed, report.format()


def test_a_saved_map_with_a_fold_loads_and_transfers_the_same_values(port, tmp_path):
    candidate, reference, weights = port
    loaded = load_weight_map(weights.save(tmp_path / "map.json"))
    fresh = _Port().double().eval()
    loaded.transfer(reference, fresh)
    assert loaded.verified and torch.equal(fresh.bn2.shift, candidate.bn2.shift) and \
        any(s["op"] == "fold_norm" for e in loaded.entries for s in e.steps), f"the map read back:\n{loaded}"


def test_reading_a_folded_map_backward_is_refused_naming_the_fold(port):
    candidate, _, weights = port
    with pytest.raises(ValueError, match=r"folds batch norms into 4 candidate tensor\(s\) \(bn1.scale <- 1.weight"):
        weights.to_reference(dict(candidate.state_dict()))


def test_a_fold_step_giving_a_shift_without_the_running_mean_is_rejected():
    step = {"op": "fold_norm", "part": "shift", "eps": 1e-5, "of": ["weight", "bias", "running_var"]}
    with pytest.raises(ValueError, match="a shift is folded from the running_mean too; name it in 'of'"):
        check_step(step)


class _FoldedParameters(nn.Module):
    """A norm without affine parameters folded into learnable ``(1, C, 1, 1)`` parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, C, 1, bias=False)
        self.scale, self.shift = nn.Parameter(torch.ones(1, C, 1, 1)), nn.Parameter(torch.zeros(1, C, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale + self.shift


def test_a_norm_without_affine_parameters_folds_from_its_statistics_alone():
    reference = randomized(nn.Sequential(nn.Conv2d(3, C, 1, bias=False), nn.BatchNorm2d(C, affine=False)), 2)
    candidate, reference, weights = transferred(_FoldedParameters().double().eval(), reference, _images())
    entry = {e.candidate: e for e in weights.entries}["shift"]
    report = harness.compare(candidate, reference, _images(), weights=weights)
    assert weights.verified and report.passed and entry.reference == ("1.running_mean", "1.running_var"), \
        f"expected shift <- the fold of 1.running_mean, 1.running_var and the port passing; got:\n{weights}"


def test_gradients_of_folded_parameters_are_not_held_against_the_norms_tensors():
    reference = randomized(nn.Sequential(nn.Conv2d(3, C, 1, bias=False), nn.BatchNorm2d(C)), 2)
    candidate, reference, weights = transferred(_FoldedParameters().double().eval(), reference, _images())
    report = harness.compare(candidate, reference, _images(), weights=weights, backward=True)
    compared = {p.candidate for p in report.backward.parameters}
    assert report.backward.passed and not compared & {"scale", "shift"}, report.format()
    assert any("folded norm" in note and "scale" in note for note in report.backward.notes), report.backward.notes
