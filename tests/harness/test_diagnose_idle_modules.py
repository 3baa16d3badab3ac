"""A candidate submodule never called in the run (a shortcut branch the port forgot to apply)
computes nothing: its settings are no finding, whatever they are, and the missing branch is."""

import torch
from torch import nn

from harness.diagnose import diagnose_modules
from helpers import findings_text

C = 4


class Block(nn.Module):
    """A body and a strided shortcut conv; ``shortcut``: whether the forward adds the shortcut."""

    def __init__(self, shortcut: bool = True, stride: int = 2) -> None:
        super().__init__()
        self.body, self.skip = nn.Conv2d(C, C, 3, stride=2, padding=1), nn.Conv2d(C, C, 1, stride=stride)
        self._shortcut = shortcut  # how the toy is written, no setting to compare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y + self.skip(x) if self._shortcut else y


def test_the_settings_of_a_submodule_never_called_are_no_finding():
    torch.manual_seed(0)
    ref, cand = Block().double().eval(), Block(shortcut=False, stride=1).double().eval()
    cand.load_state_dict(ref.state_dict())
    x = torch.randn(1, C, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    findings = diagnose_modules(cand, ref, (x,), {})
    assert findings and not [f for f in findings if f["kind"] == "attribute"], \
        f"a module never called is blamed for its settings:\n{findings_text(findings)}"
