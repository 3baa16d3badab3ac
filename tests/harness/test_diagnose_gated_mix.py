"""A gate mixing two softmaxes, ``(1 - g) * softmax(a) + g * softmax(b)`` (ConViT's gated
attention), ported with the softmaxes written out as ``exp(x - max) / sum``. The written-out
softmax is that softmax wherever it stands, ``1 - g`` is ``sub(1, g)`` (never ``g - 1``), and a port
giving each branch the other's weight is said as the factors the two products exchange."""

import torch
from torch import nn

from harness.diagnose import diagnose_modules


def written_softmax(s: torch.Tensor) -> torch.Tensor:
    e = torch.exp(s - s.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


class GatedMix(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.content, self.position = nn.Linear(8, 6), nn.Linear(8, 6)
        self.gate = nn.Parameter(torch.randn(6, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate)
        return (1. - g) * self.content(x).softmax(-1) + g * self.position(x).softmax(-1)


class GatedMixPort(nn.Module):
    """``exchanged``: the content weighted by ``g``, the position by ``1 - g``."""

    def __init__(self, exchanged: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.g = nn.Linear(8, 6), nn.Linear(8, 6), nn.Parameter(torch.zeros(6))
        self.exchanged = exchanged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.g)
        a, b = written_softmax(self.a(x)), written_softmax(self.b(x))
        return g * a + (1 - g) * b if self.exchanged else (1 - g) * a + g * b


class OneMinusGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.gate = nn.Linear(8, 6), nn.Parameter(torch.randn(6, generator=torch.Generator().manual_seed(2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1. - torch.sigmoid(self.gate)) * self.fc(x)


class GateMinusOne(OneMinusGate):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(self.gate) - 1) * self.fc(x)


class GateRsub(OneMinusGate):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rsub(torch.sigmoid(self.gate), 1) * self.fc(x)


def _findings(candidate: nn.Module, reference: nn.Module) -> list[dict]:
    torch.manual_seed(0)
    reference = reference.double()
    candidate = candidate.double()
    candidate.load_state_dict(dict(zip(candidate.state_dict(), reference.state_dict().values(), strict=True)))
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return diagnose_modules(candidate, reference, (x,), {})


def _texts(findings: list[dict]) -> str:
    return "\n".join(f["text"] for f in findings) or "(no finding)"


def test_gated_mix_with_written_out_softmaxes_has_no_finding() -> None:
    found = _findings(GatedMixPort(), GatedMix())
    assert not found, f"expected no finding for the right port, got:\n{_texts(found)}"


def test_gate_weights_exchanged_between_the_products_are_named() -> None:
    found = _findings(GatedMixPort(exchanged=True), GatedMix())
    assert found and found[0]["text"] == (
        "<root>: add joins two products whose factors sigmoid and sub are exchanged: the candidate multiplies by "
        "sigmoid what the reference multiplies by sub, and by sub what it multiplies by sigmoid"), \
        f"expected the gate's two weights said exchanged between the products, got:\n{_texts(found)}"


def test_gate_minus_one_is_said_as_operands_in_another_order() -> None:
    found = _findings(GateMinusOne(), OneMinusGate())
    assert found and found[0]["text"] == \
        "<root>: sub(x, 1) in the candidate, sub(1.0, x) in the reference: operands in another order", \
        f"expected g - 1 said against 1 - g, got:\n{_texts(found)}"


def test_rsub_is_said_as_the_subtraction_it_computes() -> None:
    found = _findings(GateRsub(), GateMinusOne())
    assert found and found[0]["text"] == \
        "<root>: sub(1, x) in the candidate, sub(x, 1) in the reference: operands in another order", \
        f"expected torch.rsub(g, 1) said as 1 - g against g - 1, got:\n{_texts(found)}"
