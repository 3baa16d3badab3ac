"""A reference that casts a table to float32 around a resize inside a float64 model (timm's
``resample_abs_pos_embed``: ``posemb.float()``, then ``F.interpolate``) has a cast the port lacks.
That cast only rounds: it is left unpaired, so the port's resize pairs with the reference's resize
and the argument in which they differ is named, not a resize "in the place of a cast"."""

import torch
from torch import nn

from harness.diagnose import diagnose_modules
from helpers import findings_text

DIM, GRID = 8, 3


class ResizedTable(nn.Module):
    """Patch tokens plus a position table resized to the patch grid (``(H, W)``, or ``(W, H)`` where
    ``swap``); ``float32``: the table is resized in float32 and cast back."""

    def __init__(self, float32: bool = False, antialias: bool = True, swap: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, DIM, 4, 4)
        self.table = nn.Parameter(torch.randn(1, DIM, GRID, GRID))
        self._float32, self._antialias, self._swap = float32, antialias, swap  # how the toy is written

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(x)
        size = tuple(tokens.shape[-2:])[::-1] if self._swap else tuple(tokens.shape[-2:])
        table = self.table.float() if self._float32 else self.table
        table = nn.functional.interpolate(table, size=size, mode="bicubic", antialias=self._antialias)
        return tokens.flatten(2) + table.to(tokens.dtype).flatten(2)


def _diagnosed(**port: bool) -> list[dict]:
    torch.manual_seed(0)
    ref, cand = ResizedTable(float32=True).double().eval(), ResizedTable(**port).double().eval()
    cand.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 12, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return diagnose_modules(cand, ref, (x,), {})


def test_resize_against_one_after_a_lone_float32_cast_names_its_antialias():
    findings = _diagnosed(antialias=False)
    assert findings and findings[0]["argument"] == "antialias", \
        f"expected the resize's antialias first, got:\n{findings_text(findings)}"


def test_resize_against_one_after_a_lone_float32_cast_names_its_size():
    findings = _diagnosed(swap=True)
    assert findings and findings[0]["argument"] == "size", \
        f"expected the resize's size first, got:\n{findings_text(findings)}"


def test_lone_float32_cast_is_never_the_twin_of_a_resize():
    findings = _diagnosed(antialias=False)
    assert not any("where the reference applies cast" in f["text"] for f in findings), \
        f"a cast that only rounds was paired with the port's resize:\n{findings_text(findings)}"
