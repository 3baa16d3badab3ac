"""A tensor holding what the weight map puts there but for one block (a relative position table
read through an index with one row zeroed) names that block, whether its module has a twin or
not; a tensor holding what the map puts in another tensor (a class token holding the
distillation token's values) names that tensor. A change everywhere is still other values."""

from __future__ import annotations

import torch
from torch import nn

import harness
from helpers import compare_port, findings_text

DIM, ROWS, TOKENS = 8, 9, 5


def _index() -> torch.Tensor:
    """Which row of the table each of the tokens' pairs reads (relative offsets, shifted to >= 0)."""
    at = torch.arange(TOKENS)
    return ((at[:, None] - at[None, :]) % ROWS).flatten()


class _GatheredTable(nn.Module):
    """A bias table of ``ROWS`` rows, read through a fixed index into a (tokens, tokens) bias."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(ROWS, 1))
        self.register_buffer("index", _index(), persistent=False)

    def forward(self) -> torch.Tensor:
        return self.table[self.index].view(TOKENS, TOKENS)


class _MixWithBiasModule(nn.Module):
    """Tokens mixed by ``softmax(x x^T + bias)``, the bias made by a module of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.bias = nn.Linear(DIM, DIM), _GatheredTable()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return (x @ x.transpose(-1, -2) + self.bias()).softmax(-1) @ x


class _MixWithTableInline(nn.Module):
    """The same, the table held and read by the mixing module itself."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(DIM, DIM)
        self.table = nn.Parameter(torch.randn(ROWS, 1))
        self.register_buffer("index", _index(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        bias = self.table[self.index].view(TOKENS, TOKENS)
        return (x @ x.transpose(-1, -2) + bias).softmax(-1) @ x


class _TokenEmbed(nn.Module):
    """A class token and a distillation token prepended to the tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token, self.dist_token = nn.Parameter(torch.randn(1, 1, DIM)), nn.Parameter(torch.randn(1, 1, DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return torch.cat([self.cls_token.expand(n, -1, -1), self.dist_token.expand(n, -1, -1), x], 1)


class _EmbedInModule(nn.Module):
    """Tokens projected, the two tokens prepended by a module of their own, then a norm."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.embeddings, self.norm = nn.Linear(DIM, DIM), _TokenEmbed(), nn.LayerNorm(DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.embeddings(self.proj(x)))


class _EmbedInline(nn.Module):
    """The same, the tokens held and prepended by the model itself."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.norm = nn.Linear(DIM, DIM), nn.LayerNorm(DIM)
        self.cls_token, self.dist_token = nn.Parameter(torch.randn(1, 1, DIM)), nn.Parameter(torch.randn(1, 1, DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, n = self.proj(x), x.shape[0]
        return self.norm(torch.cat([self.cls_token.expand(n, -1, -1), self.dist_token.expand(n, -1, -1), x], 1))


def _why(candidate: nn.Module, reference: nn.Module, change, x: torch.Tensor | None = None) -> str:
    harness.randomize_(reference, torch.Generator().manual_seed(0))
    x = torch.randn(2, TOKENS, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) if x is None else x
    report = compare_port(candidate.double().eval(), reference.double().eval(), x, change)
    assert not report.passed, "the changed tensor went unnoticed"
    return findings_text(report.diagnosis)


def test_a_gathered_table_without_a_twin_with_a_row_zeroed_names_that_row() -> None:
    why = _why(_MixWithBiasModule(), _MixWithTableInline(), lambda m: m.bias.table[5].zero_())
    expected = "table[5:6] zeroed, the rest agrees"
    first = why.splitlines()[0]
    assert first.startswith("argument | bias: table holds other values") and expected in first, \
        f"expected row 5 of the table named zeroed, got:\n{why}"


def test_a_gathered_table_with_a_twin_with_a_row_changed_names_that_row() -> None:
    why = _why(_MixWithTableInline(), _MixWithTableInline(), lambda m: m.table[2].add_(0.5))
    expected = "table[2:3] differs, the rest agrees"
    assert expected in why, f"expected row 2 of the table named, got:\n{why}"


def test_a_table_changed_everywhere_still_holds_other_values() -> None:
    why = _why(_MixWithBiasModule(), _MixWithTableInline(), lambda m: m.bias.table.mul_(1.5))
    first = why.splitlines()[0]
    assert "bias: table holds other values than the reference's table" in first and "agrees" not in first, \
        f"expected no part named for a table changed all over, got:\n{why}"


def test_a_token_holding_another_tokens_values_names_that_tensor() -> None:
    def swapped(m: nn.Module) -> None:
        e = m.embeddings
        cls = e.cls_token.clone()
        e.cls_token.copy_(e.dist_token)
        e.dist_token.copy_(cls)
    why = _why(_EmbedInModule(), _EmbedInline(), swapped, torch.randn(2, TOKENS, DIM, dtype=torch.float64))
    expected = "embeddings: cls_token holds the reference's dist_token, where the weight map puts cls_token"
    assert expected in why, f"expected the class token named holding the distillation token, got:\n{why}"
