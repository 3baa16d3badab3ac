"""A parameter stored right of which an operation receives one slice where the reference passes all
of it: a position table added to the patch tokens only (``cat([cls, x + pos[:, 1:]])``), the class
token's row never added. The diagnosis names the slice received and the slice left out, not the
``cat`` that the candidate does apply (after the add)."""

import torch
from torch import nn

from harness.diagnose import diagnose_modules
from helpers import findings_text

DIM, PATCH = 8, 4


class Embedding(nn.Module):
    """Patches, a class token and a position table; ``how`` says where the table is added."""

    def __init__(self, how: str = "after", eps: float = 1e-6) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, DIM, PATCH, PATCH)
        self.cls, self.pos = nn.Parameter(torch.randn(1, 1, DIM)), nn.Parameter(torch.randn(1, 5, DIM))
        self.norm = nn.LayerNorm(DIM, eps=eps)
        self._how = how  # how the toy is written, no setting to compare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        cls = self.cls.expand(len(t), -1, -1)
        if self._how == "after":
            t = torch.cat([cls, t], 1) + self.pos
        elif self._how == "patches only":
            t = torch.cat([cls, t + self.pos[:, 1:]], 1)
        else:  # each part its own rows of the table, then joined: the same result
            t = torch.cat([cls + self.pos[:, :1], t + self.pos[:, 1:]], 1)
        return self.norm(t)


def _diagnosed(cand: nn.Module, ref: nn.Module) -> list[dict]:
    torch.manual_seed(0)
    ref.double().eval()
    cand.double().eval().load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 2 * PATCH, 2 * PATCH, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return diagnose_modules(cand, ref, (x,), {})


def test_a_position_table_added_to_the_patches_only_names_the_row_left_out():
    torch.manual_seed(0)
    findings = _diagnosed(Embedding("patches only"), Embedding())
    text = findings[0]["text"] if findings else ""
    assert "receives pos[:, 1:5] only" in text and "pos[:, 0:1] never reaches this add" in text, \
        f"expected pos[:, 1:5] received and pos[:, 0:1] left out, got:\n{findings_text(findings)}"


def test_a_position_table_added_in_two_slices_is_not_blamed_for_a_later_difference():
    torch.manual_seed(0)
    findings = _diagnosed(Embedding("in parts", eps=1e-3), Embedding())
    assert not any("pos[" in f["text"] for f in findings), \
        f"a table added in two slices, each where it belongs, is blamed:\n{findings_text(findings)}"
