"""A conv built without padding whose parent pads the map before calling it (asymmetric "SAME"
padding, as a TensorFlow port writes it), against a reference conv padding inside: the culprit
conv receives a map of another size than its twin's, so its own padding argument alone would say
it does not pad at all. Its parent, which runs the pad and the conv, explains it: the pad merged
into the conv's padding, against the reference's."""

import torch
from torch import nn
from torch.nn import functional as F

import harness
from port_toys import randomized
from helpers import findings_text


class Layer(nn.Module):
    """A 3x3 depthwise conv, stride 2, then a batch norm and ReLU6; ``pad``: the conv pads nothing
    and the layer pads the map ``(left, right, top, bottom)`` before it."""

    def __init__(self, pad: tuple[int, int, int, int] | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, stride=2, padding=0 if pad else 1, groups=8, bias=False)
        self.bn, self.act, self.pad = nn.BatchNorm2d(8), nn.ReLU6(), pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(F.pad(x, self.pad) if self.pad else x)))


class Net(nn.Module):
    def __init__(self, pad: tuple[int, int, int, int] | None = None) -> None:
        super().__init__()
        self.stem, self.layer, self.head = nn.Conv2d(3, 8, 1), Layer(pad), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.stem(x)))


def _report(pad: tuple[int, int, int, int]) -> "harness.Report":
    reference, candidate = randomized(Net(), seed=3), Net(pad).double().eval()
    candidate.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return harness.compare(candidate, reference, x)


def test_pad_in_the_parent_is_merged_into_the_conv_padding_of_the_why() -> None:
    report = _report((0, 1, 0, 1))
    text = findings_text(report.diagnosis)
    assert not report.passed and report.diagnosis and "padding ((0, 1), (0, 1)) in the candidate" in text, \
        f"expected the padding the candidate applies, ((0, 1), (0, 1)), against the reference's (1, 1), got:\n{text}"


def test_why_of_a_conv_padded_by_its_parent_does_not_say_it_pads_nothing() -> None:
    report = _report((0, 1, 0, 1))
    why = report.diagnosis[0]["text"] if report.diagnosis else ""
    assert why and "conv2d padding (0, 0) in the candidate" not in why, \
        f"expected a why that does not say the conv pads nothing (its parent pads), got:\n{why or '(no why)'}"


def test_symmetric_pad_in_the_parent_passes() -> None:
    report = _report((1, 1, 1, 1))
    assert report.passed, f"expected a pad of 1 on each side before an unpadded conv to pass, got:\n{report.format()}"
