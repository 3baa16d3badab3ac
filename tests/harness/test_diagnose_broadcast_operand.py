"""A layer scale stored right but applied over other axes than the reference's: passed in part (one
of its values for every channel) or broadcast along another axis of the same shape (the width of a
map as wide as it has channels, the tokens of a sequence as long as it is wide). The diagnosis names
the operand and how it spreads over the result, never "the same arguments and inputs"."""

import torch
from torch import nn

from harness.diagnose import diagnose_modules
from helpers import findings_text

CHANNELS = 8


class MapScale(nn.Module):
    """``x + conv(x) * gamma`` on an NCHW map; ``how`` says how gamma ``(C, 1, 1)`` is passed."""

    def __init__(self, how: str = "channels") -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, CHANNELS, 1)
        self.gamma = nn.Parameter(torch.rand(CHANNELS, 1, 1) + 0.5)
        self._how = how  # how the toy is written, no setting to compare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = {"channels": self.gamma, "first": self.gamma.reshape(1, 1, 1, -1)[..., :1],
                 "width": self.gamma.reshape(-1)}[self._how]
        return x + self.conv(x) * gamma


class TokenScale(nn.Module):
    """``x + fc(x) * gamma`` on ``(batch, tokens, channels)``; ``along_tokens``: gamma ``[:, None]``."""

    def __init__(self, along_tokens: bool = False) -> None:
        super().__init__()
        self.fc, self.gamma = nn.Linear(CHANNELS, CHANNELS), nn.Parameter(torch.rand(CHANNELS) + 0.5)
        self._along_tokens = along_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(x) * (self.gamma[:, None] if self._along_tokens else self.gamma)


def _diagnosed(cand: nn.Module, ref: nn.Module, x: torch.Tensor) -> list[dict]:
    torch.manual_seed(0)
    ref.double().eval()
    cand.double().eval().load_state_dict(ref.state_dict())
    return diagnose_modules(cand, ref, (x.double(),), {})


def _map() -> torch.Tensor:
    return torch.randn(2, CHANNELS, 3, CHANNELS, generator=torch.Generator().manual_seed(1))


def test_a_layer_scale_passed_in_part_names_how_many_of_its_values_the_op_receives():
    findings = _diagnosed(MapScale("first"), MapScale(), _map())
    assert findings and "receives 1 of gamma's values" in findings[0]["text"] \
        and f"passes all {CHANNELS} of gamma" in findings[0]["text"], \
        f"expected gamma passed as 1 of its {CHANNELS} values, got:\n{findings_text(findings)}"


def test_a_layer_scale_broadcast_along_the_width_names_the_axes_it_runs_along():
    findings = _diagnosed(MapScale("width"), MapScale(), _map())
    assert findings and "runs along axes [3]" in findings[0]["text"] \
        and "reference's gamma runs along axes [1]" in findings[0]["text"], \
        f"expected gamma along the width (axis 3) against the channels (axis 1), got:\n{findings_text(findings)}"


def test_a_layer_scale_broadcast_along_the_tokens_names_the_axes_it_runs_along():
    x = torch.randn(2, CHANNELS, CHANNELS, generator=torch.Generator().manual_seed(1))
    findings = _diagnosed(TokenScale(along_tokens=True), TokenScale(), x)
    assert findings and "runs along axes [1]" in findings[0]["text"] \
        and "reference's gamma runs along axes [2]" in findings[0]["text"], \
        f"expected gamma along the tokens (axis 1) against the channels (axis 2), got:\n{findings_text(findings)}"
