"""Names pair no modules the weight map holds apart: a port's ``stem`` whose last norm and
activation its parent applies, against an original ``stem`` (torchvision's ``R2Plus1dStem``)
holding all of them, computes another function under the same name."""

import torch
import torch.nn as nn
import torch.nn.functional as F

import harness
from harness.align import held_apart
from harness.pairs import randomize_


class WholeStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(self.stem(x))


class ShortStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.n1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 16, 1, bias=False)

    def forward(self, x):
        return self.c2(F.relu(self.n1(self.c1(x))))


class ParentNormsTheStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = ShortStem()
        self.stem_bn = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(F.relu(self.stem_bn(self.stem(x))))


def mapped_pair():
    reference = WholeStem().double().eval()
    randomize_(reference, torch.Generator().manual_seed(0))
    candidate = ParentNormsTheStem().double().eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    return candidate, reference, x, weights


def test_stem_whose_last_norm_the_parent_holds_gets_a_verified_map():
    *_, weights = mapped_pair()
    assert weights.verified, f"map not verified: {weights.conflicts}"


def test_stem_whose_last_norm_the_parent_holds_passes():
    candidate, reference, x, weights = mapped_pair()
    report = harness.compare(candidate, reference, x, weights=weights)
    assert report.passed, f"a correct port failed: culprit {report.culprit!r}, why {report.diagnosis[:1]}"


def test_namesake_stems_holding_other_tensors_are_not_compared():
    candidate, reference, x, weights = mapped_pair()
    report = harness.compare(candidate, reference, x, weights=weights)
    paired = {(row.candidate, row.reference) for row in report.rows}
    assert ("stem", "stem") not in paired, f"the two stems were compared: {sorted(paired)}"


def test_eps_bug_in_the_parent_held_norm_blames_that_norm():
    candidate, reference, x, weights = mapped_pair()
    candidate.stem_bn.eps = 1e-1
    report = harness.compare(candidate, reference, x, weights=weights)
    assert not report.passed and report.culprit == "stem_bn", f"culprit {report.culprit!r}, expected 'stem_bn'"


def test_a_tensor_the_map_places_elsewhere_holds_modules_apart():
    apart = held_apart({"stem.c.weight": {"stem.0.weight"}, "bn.weight": {"stem.1.weight"}},
                       {"stem.0.weight": {"stem.c.weight"}, "stem.1.weight": {"bn.weight"}})
    assert apart("stem", "stem"), "the reference stem's norm is the candidate's bn, outside its stem"
    assert not apart("stem.c", "stem.0"), "the convolutions hold the same tensor"


def test_a_tensor_the_map_does_not_place_says_nothing():
    # a candidate norm replaced by Identity: the reference norm's tensors feed nothing
    apart = held_apart({"block.fc.weight": {"block.fc.weight"}}, {"block.fc.weight": {"block.fc.weight"}})
    assert not apart("block", "block") and not apart("block.norm", "block.norm")


def test_a_module_with_only_some_tensors_outside_is_no_proof():
    # a conv whose bias is taken from the batch norm folded into it: one step done in two modules
    apart = held_apart({"conv.weight": {"conv.weight"}, "conv.bias": {"bn.bias"}},
                       {"conv.weight": {"conv.weight"}, "bn.bias": {"conv.bias"}})
    assert not apart("conv", "conv")
