"""A relative position bias one side gathers from its table by indexing (a view of the parameter,
no op) and the other builds by einsums of the table with one-hot lookup buffers (timm's MaxViT) is
one attention mask: the ops building it from parameters alone belong to the attention adding it
(to scores written out, or as a fused call's ``attn_mask``), and the two masks are compared by
value, so a right port is no finding and a bias transposed is said to hold the reference's with
its dims permuted, not to be a mask the reference lacks."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.diagnose import diagnose_modules
from helpers import findings_text

DIM, HEADS, WINDOW = 16, 2, 3
TOKENS, HEAD = WINDOW * WINDOW, DIM // HEADS


def _offsets() -> tuple[torch.Tensor, torch.Tensor]:
    """Each query-key pair's row and column offset, shifted to index a (2w-1, 2w-1) table."""
    yy, xx = torch.meshgrid(torch.arange(WINDOW), torch.arange(WINDOW), indexing="ij")
    yy, xx = yy.flatten(), xx.flatten()
    return yy[None, :] - yy[:, None] + WINDOW - 1, xx[None, :] - xx[:, None] + WINDOW - 1


class BiasedAttention(nn.Module):
    """A fused attention over one window whose scores get a relative position bias from ``table``."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self.table = nn.Parameter(torch.randn(HEADS, 2 * WINDOW - 1, 2 * WINDOW - 1))

    def bias(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, HEAD).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias())
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


class GatheredBias(BiasedAttention):
    """The bias indexed out of the table; ``transposed``: laid out keys for queries."""

    def __init__(self, transposed: bool = False) -> None:
        super().__init__()
        iy, ix = _offsets()
        self.register_buffer("iy", iy, persistent=False)
        self.register_buffer("ix", ix, persistent=False)
        self.transposed = transposed

    def bias(self) -> torch.Tensor:
        bias = self.table[:, self.iy, self.ix]
        return bias.transpose(-1, -2) if self.transposed else bias


class EinsumBias(BiasedAttention):
    """The bias built by einsums of the table with one-hot lookups of the offsets, as timm's MaxViT does."""

    def __init__(self) -> None:
        super().__init__()
        iy, ix = _offsets()
        size = 2 * WINDOW - 1
        self.register_buffer("height_lookup", F.one_hot(iy, size).double().reshape(WINDOW, WINDOW, WINDOW,
                                                                                   WINDOW, size)[:, 0, :, 0])
        self.register_buffer("width_lookup", F.one_hot(ix, size).double().reshape(WINDOW, WINDOW, WINDOW,
                                                                                  WINDOW, size)[0, :, 0, :])

    def bias(self) -> torch.Tensor:
        rows = torch.einsum("nhw,ixh->nixw", self.table, self.height_lookup)
        both = torch.einsum("nixw,jyw->nijxy", rows, self.width_lookup)
        return both.reshape(HEADS, TOKENS, TOKENS)


class WrittenOut(EinsumBias):
    """The einsum-built bias added to scores written out, ``softmax(q @ k^T * s + bias) @ v``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, HEAD).permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q @ k.transpose(-2, -1)) * HEAD ** -0.5 + self.bias()
        return self.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


def _diagnosed(cand: nn.Module, ref: nn.Module) -> list[dict]:
    torch.manual_seed(0)
    ref.double().eval()
    cand.double().eval().load_state_dict(ref.state_dict(), strict=False)
    x = torch.randn(2, TOKENS, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return diagnose_modules(cand, ref, (x,), {})


def test_the_toys_build_one_bias():
    cand, ref = GatheredBias().double(), EinsumBias().double()
    cand.table.data.copy_(ref.table)
    assert torch.equal(cand.bias(), ref.bias()), "the gathered bias differs from the einsum-built one: a broken toy"


def test_bias_gathered_against_one_built_by_einsums_is_no_finding():
    findings = _diagnosed(GatheredBias(), EinsumBias())
    assert findings == [], f"a right port is blamed:\n{findings_text(findings)}"


@pytest.fixture(scope="module")
def transposed_findings() -> list[dict]:
    return _diagnosed(GatheredBias(transposed=True), EinsumBias())


def test_gathered_bias_transposed_is_the_references_bias_with_its_dims_permuted(transposed_findings):
    first = transposed_findings[0]["text"] if transposed_findings else ""
    assert "attn_mask" in first and "permuted (0, 2, 1)" in first, \
        f"the transposed bias is not said to be the reference's permuted:\n{findings_text(transposed_findings)}"


def test_gathered_bias_transposed_is_not_a_mask_the_reference_lacks(transposed_findings):
    text = findings_text(transposed_findings)
    assert "passes none" not in text and "missing in the candidate" not in text, \
        f"the bias the reference builds by einsums is taken for no mask:\n{text}"


def test_the_tables_the_reference_builds_its_bias_from_are_named(transposed_findings):
    first = transposed_findings[0]["text"] if transposed_findings else ""
    assert "height_lookup" in first and "width_lookup" in first, \
        f"the finding does not say what the reference builds its bias from:\n{findings_text(transposed_findings)}"


def test_bias_built_by_einsums_for_written_out_scores_is_only_the_mask_permuted():
    findings = _diagnosed(WrittenOut(), GatheredBias(transposed=True))
    assert [f["argument"] for f in findings] == ["attn_mask"], \
        f"the ops building the bias are findings of their own:\n{findings_text(findings)}"


class ShiftedMaskedBias(GatheredBias):
    """The gathered bias plus a window mask made in forward from constants (a Swin block's shifted
    window), summed before the fused call: ``shift`` rolls the tokens first, as a shifted block does."""

    def __init__(self, shift: int) -> None:
        super().__init__()
        self.shift = shift

    def bias(self) -> torch.Tensor:
        mask = torch.zeros(TOKENS, TOKENS, dtype=self.table.dtype)
        mask[: TOKENS // 2, TOKENS // 2:] = -100.0
        return self.table[:, self.iy, self.ix] + mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.roll(x, self.shift, dims=1) if self.shift else x)


def test_a_mask_summed_from_a_table_and_a_constant_mask_leaves_the_missing_roll_named():
    findings = _diagnosed(ShiftedMaskedBias(shift=0), ShiftedMaskedBias(shift=-2))
    text = findings_text(findings)
    assert findings and "roll" in findings[0]["text"] and "no operation-level diagnosis" not in text, \
        f"a mask summed from parameters and constants alone breaks the diagnosis of a forgotten roll:\n{text}"
