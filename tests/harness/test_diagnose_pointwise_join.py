"""A fuse layer that joins branches and mixes their channels, written ``x @ W`` on the
channels-last map by the port and as a 1x1 conv by the reference, is one operation in two
spellings: branches joined in another order before it are the finding, not the spelling, and
they are said as the join's operands exchanged, also where a child module reads the join."""

import torch
import torch.nn.functional as F
from torch import nn

from harness.diagnose import diagnose_modules
from helpers import findings_text

C = 4


class ConvFuse(nn.Module):
    """Two branches joined on the channels, mixed by a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(C, C, 3, padding=1), nn.Conv2d(C, C, 1)
        self.fuse = nn.Parameter(torch.randn(C, 2 * C, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(torch.cat([self.a(x), self.b(x)], 1), self.fuse)


class MatmulFuse(nn.Module):
    """The same, the fuse weight stored ``(C_in, C_out)`` and applied as ``x @ W`` on NHWC;
    ``exchanged``: the branches joined in the other order."""

    def __init__(self, exchanged: bool = False) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(C, C, 3, padding=1), nn.Conv2d(C, C, 1)
        self.fuse = nn.Parameter(torch.randn(2 * C, C))
        self._exchanged = exchanged  # how the toy is written, no setting to compare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.a(x), self.b(x)]
        joined = torch.cat(parts[::-1] if self._exchanged else parts, 1)
        return (joined.permute(0, 2, 3, 1) @ self.fuse).permute(0, 3, 1, 2)


def _diagnosed(exchanged: bool) -> list[dict]:
    torch.manual_seed(0)
    ref, cand = ConvFuse().double().eval(), MatmulFuse(exchanged).double().eval()
    with torch.no_grad():
        for name in ("a", "b"):
            getattr(cand, name).load_state_dict(getattr(ref, name).state_dict())
        cand.fuse.copy_(ref.fuse[:, :, 0, 0].t())
    x = torch.randn(1, C, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return diagnose_modules(cand, ref, (x,), {})


def test_a_matmul_fuse_against_a_pointwise_conv_fuse_is_no_finding():
    findings = _diagnosed(False)
    assert findings == [], f"a right port is blamed:\n{findings_text(findings)}"


def test_branches_joined_in_another_order_before_a_matmul_fuse_are_the_finding():
    findings = _diagnosed(True)
    assert findings and "where the reference applies conv2d" not in findings[0]["text"] \
        and "another order" in findings[0]["text"], \
        f"expected the branches' order, not the fuse's spelling, got:\n{findings_text(findings)}"


def test_branches_joined_in_another_order_before_a_matmul_fuse_name_the_cat_operands():
    findings = _diagnosed(True)
    assert findings and "cat joins its operands in another order than the reference's: operand 0 holds " \
        "the reference's operand 1, operand 1 holds the reference's operand 0" in findings[0]["text"], \
        f"expected the cat's operands named exchanged first, got:\n{findings_text(findings)}"


class Merge(nn.Module):
    """Two branches joined, the join read by a child conv; ``exchanged``: joined in the other order."""

    def __init__(self, exchanged: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.merge = nn.Conv2d(C, C, 3, padding=1), nn.Conv2d(C, C, 1), nn.Conv2d(2 * C, C, 1)
        self._exchanged = exchanged  # how the toy is written, no setting to compare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.a(x), self.b(x)]
        return self.merge(torch.cat(parts[::-1] if self._exchanged else parts, 1))


def test_a_join_read_by_a_child_is_named_on_the_module_running_it():
    torch.manual_seed(0)
    ref, cand = Merge().double().eval(), Merge(exchanged=True).double().eval()
    cand.load_state_dict(ref.state_dict())
    x = torch.randn(1, C, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    findings = diagnose_modules(cand, ref, (x,), {}, name="block")
    assert findings and findings[0]["module"] == "block" and findings[0]["op"] == "cat", \
        f"expected the block's cat named first, got:\n{findings_text(findings)}"
