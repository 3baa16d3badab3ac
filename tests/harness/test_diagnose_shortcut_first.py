"""A residual block whose port computes its shortcut before its main branch, where the reference
computes it after: the shortcut's ops are unpaired at the start and agree once paired by their
parameters, so they explain nothing; an activation replaced in the main branch after them is the
finding, not the next op, which only receives what the replaced one changed."""

import torch
from torch import nn
from torch.nn import functional as F

from harness.diagnose import diagnose_modules
from port_toys import randomized
from helpers import findings_text


class Block(nn.Module):
    """``relu(bn2(conv2(act(bn1(conv1(x))))) + bnd(down(x)))``, the shortcut computed after the
    main branch, or before it (``shortcut_first``)."""

    def __init__(self, act: nn.Module | None = None, shortcut_first: bool = False) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act = nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), act or nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.down, self.bnd = nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8)
        self.shortcut_first = shortcut_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.bnd(self.down(x)) if self.shortcut_first else None
        y = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        return F.relu(y + (shortcut if shortcut is not None else self.bnd(self.down(x))))


def _findings(act: nn.Module) -> list[dict]:
    reference = randomized(Block(), seed=2)
    candidate = Block(act, shortcut_first=True).double().eval()
    candidate.load_state_dict(reference.state_dict())
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return [f for f in diagnose_modules(candidate, reference, (x,), {}) if f["kind"] != "attribute"]


def test_activation_swapped_after_a_shortcut_computed_first_is_named() -> None:
    findings = _findings(nn.Hardswish())
    assert findings and findings[0]["kind"] == "op" and findings[0]["module"] == "act" \
        and "applies hardswish where the reference applies relu" in findings[0]["text"], \
        f"expected act named for applying hardswish where the reference applies relu, got:\n{findings_text(findings)}"


def test_block_computing_its_shortcut_first_has_no_finding() -> None:
    findings = _findings(nn.ReLU())
    assert findings == [], f"expected no finding for a right port, got:\n{findings_text(findings)}"
