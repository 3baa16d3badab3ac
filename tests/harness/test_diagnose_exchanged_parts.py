"""Operands exchanged between siblings: the heads of a split projection each given the other's rows
of the reference's fused kernel are named by the rows they hold and the rows the weight map puts
there; two products reading one input that take each other's tables (a decomposed relative
position's height and width tables) are named as those tables exchanged."""

import torch
from torch import nn

from harness.diagnose import diagnose_modules
from helpers import compare_port, findings_text
from port_toys import randomized

HIDDEN, PATHS, CHANNELS = 6, 2, 4


class FusedSelect(nn.Module):
    """Per-path logits from one 1x1 conv of ``PATHS * CHANNELS`` output channels."""

    def __init__(self) -> None:
        super().__init__()
        self.squeeze, self.select = nn.Linear(CHANNELS, HIDDEN), nn.Conv2d(HIDDEN, PATHS * CHANNELS, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.squeeze(x))
        return self.select(z[..., None, None]).reshape(x.shape[0], PATHS, CHANNELS).softmax(1)


class SplitSelect(nn.Module):
    """``FusedSelect`` with one linear head per path."""

    def __init__(self) -> None:
        super().__init__()
        self.squeeze = nn.Linear(CHANNELS, HIDDEN)
        self.heads = nn.ModuleList(nn.Linear(HIDDEN, CHANNELS, bias=False) for _ in range(PATHS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.squeeze(x))
        return torch.stack([head(z) for head in self.heads], 1).softmax(1)


class Net(nn.Module):
    def __init__(self, select: nn.Module) -> None:
        super().__init__()
        self.embed, self.select = nn.Linear(3, CHANNELS), select

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.select(self.embed(x))


def _exchange_heads(model: nn.Module) -> None:
    first, second = model.select.heads
    kept = first.weight.clone()
    first.weight.copy_(second.weight)
    second.weight.copy_(kept)


class RelativeTerms(nn.Module):
    """``q`` against a height table along rows and a width table along columns (decomposed relative
    positions)."""

    def __init__(self, size: int = 3, dim: int = 4) -> None:
        super().__init__()
        self.table_h, self.table_w = nn.Parameter(torch.randn(size, size, dim)), nn.Parameter(torch.randn(size, size, dim))

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.terms(q, self.table_h, self.table_w)

    @staticmethod
    def terms(q: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        bh = torch.einsum("nhwd,hkd->nhwk", q, h)
        bw = torch.einsum("nhwd,wkd->nhwk", q, w)
        return bh[..., :, None] + bw[..., None, :]


class ExchangedTerms(RelativeTerms):
    """Each product given the other's table."""

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.terms(q, self.table_w, self.table_h)


def test_heads_holding_each_others_rows_of_a_fused_kernel_are_named_by_the_rows() -> None:
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    report = compare_port(Net(SplitSelect()).double().eval(), randomized(Net(FusedSelect()), seed=3), x,
                          _exchange_heads)
    text = findings_text(report.diagnosis)
    assert "heads.0.weight holds the reference's select.weight[4:8], where the weight map puts " \
           "select.weight[0:4]" in text, \
        f"expected heads.0.weight named as holding rows [4:8] where the map puts rows [0:4], got:\n{text}"


def test_tables_exchanged_between_two_products_of_one_input_are_named() -> None:
    torch.manual_seed(0)
    reference = RelativeTerms().double()
    candidate = ExchangedTerms().double()
    candidate.load_state_dict(reference.state_dict())
    q = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    findings = diagnose_modules(candidate, reference, (q,), {})
    first = findings[0] if findings else {}
    assert first.get("kind") == "argument" and "take each other's operands" in first.get("text", "") \
        and "table_w" in first["text"] and "table_h" in first["text"], \
        f"expected the height and width tables named as exchanged between the products, got:\n{findings_text(findings)}"
