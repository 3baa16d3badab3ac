"""Weight maps where one model reads one tensor at several places and the other keeps one tensor per
place: a reference tying its output head to its embedding, or sharing one relative-position table
among its blocks, against a port with separate tensors (each takes the shared one); and a port
applying one block twice against a reference with two blocks (the block takes the first, the
second feeds nothing in the port)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import harness
from helpers import seeded

VOCAB, C, TOKENS, HEADS = 20, 8, 5, 2


def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, TOKENS), generator=torch.Generator().manual_seed(0))


def tokens() -> torch.Tensor:
    return torch.randn(2, TOKENS, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def map_sources(weights) -> dict[str, tuple[str, ...]]:
    return {e.candidate: e.reference for e in weights.entries}


# -- a language-model-like stack whose head is (or is not) its embedding ----------------------------
class TiedLM(nn.Module):
    """Embedding, one residual mixing layer, a norm, and logits against the embedding itself."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, C)
        self.mix = nn.Linear(C, C)
        self.norm = nn.LayerNorm(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        h = self.norm(h + torch.tanh(self.mix(h)))
        return h @ self.emb.weight.t()


class UntiedLM(nn.Module):
    """The same computation keeping its head as a tensor of its own; ``scale`` changes its logits."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.tok = nn.Embedding(VOCAB, C)
        self.ff = nn.Linear(C, C)
        self.ln = nn.LayerNorm(C)
        self.out = nn.Linear(C, VOCAB, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x)
        h = self.ln(h + torch.tanh(self.ff(h)))
        return self.out(h) * self.scale


class SecondTableLM(nn.Module):
    """An untied stack with a head of its own; or (``tied_lookup``) one without a head, reading its
    embedding a second time as an embedding table (of the shifted ids), not as a head."""

    def __init__(self, tied_lookup: bool) -> None:
        super().__init__()
        self.tied_lookup = tied_lookup
        self.emb = nn.Embedding(VOCAB, C)
        self.mix = nn.Linear(C, C)
        self.norm = nn.LayerNorm(C)
        if not tied_lookup:
            self.head = nn.Linear(C, VOCAB, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        h = self.norm(h + torch.tanh(self.mix(h)))
        if self.tied_lookup:
            return h + F.embedding((x + 1) % VOCAB, self.emb.weight)
        return self.head(h)


def test_a_port_keeping_the_head_a_reference_ties_to_its_embedding_takes_the_embedding_for_both():
    weights = harness.map_weights(seeded(UntiedLM(), 1), seeded(TiedLM(), 2), ids())
    assert (map_sources(weights).get("tok.weight"), map_sources(weights).get("out.weight")) == (("emb.weight",),) * 2, \
        str(weights)


def test_a_tied_reference_map_covers_the_port_and_is_verified():
    weights = harness.map_weights(seeded(UntiedLM(), 1), seeded(TiedLM(), 2), ids())
    assert (weights.coverage, weights.unmatched, weights.verified) == (
        1.0, {"candidate": [], "reference": []}, True), str(weights)


def test_a_correct_untied_port_of_a_tied_reference_passes_through_the_map():
    candidate, reference = seeded(UntiedLM(), 1), seeded(TiedLM(), 2)
    weights = harness.map_weights(candidate, reference, ids())
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, ids(), weights=weights)
    assert report.passed, report.format()


def test_the_map_notes_which_reference_tensor_feeds_several_candidate_tensors():
    weights = harness.map_weights(seeded(UntiedLM(), 1), seeded(TiedLM(), 2), ids(), verify=False)
    assert any("emb.weight feeds 2 candidate tensors (tok.weight, out.weight)" in n for n in weights.notes), \
        str(weights)


def test_a_port_whose_head_computes_otherwise_gets_the_tied_pairing_refused_by_verification():
    weights = harness.map_weights(seeded(UntiedLM(scale=2.0), 1), seeded(TiedLM(), 2), ids())
    assert weights.verified is False and weights.conflicts, str(weights)


def test_a_tensor_the_reference_reads_again_by_another_kind_of_operation_feeds_no_head():
    weights = harness.map_weights(seeded(UntiedLM(), 1), seeded(SecondTableLM(tied_lookup=True), 2), ids(),
                                  verify=False)
    assert "out.weight" not in map_sources(weights) and "out.weight" in weights.unmatched["candidate"], str(weights)


def test_two_models_tying_alike_map_the_shared_tensor_once():
    weights = harness.map_weights(seeded(TiedLM(), 1), seeded(TiedLM(), 2), ids())
    assert ([e.candidate for e in weights.entries].count("emb.weight"), weights.verified, weights.notes) == (
        1, True, []), str(weights)


def test_an_untied_reference_gives_an_untied_port_its_own_head():
    weights = harness.map_weights(seeded(UntiedLM(), 1), seeded(SecondTableLM(tied_lookup=False), 2), ids())
    assert (map_sources(weights).get("out.weight"), weights.verified) == (("head.weight",), True), str(weights)


# -- reading a map with a tied source backward ---------------------------------------------------------
def tied_map():
    return harness.map_weights(seeded(UntiedLM(), 1), seeded(TiedLM(), 2), ids(), verify=False)


def test_read_backward_tied_candidate_tensors_that_differ_are_refused_naming_the_copy():
    with pytest.raises(ValueError, match=r"out\.weight differs from what emb\.weight .*strict=False"):
        tied_map().to_reference(seeded(UntiedLM(), 3).state_dict())


def test_read_backward_without_strict_tied_candidate_tensors_that_differ_give_the_first():
    candidate = seeded(UntiedLM(), 3)
    back = tied_map().to_reference(candidate.state_dict(), strict=False)
    assert torch.equal(back["emb.weight"], candidate.tok.weight), "emb.weight is not tok.weight's values"


def test_a_saved_tied_map_loads_and_fills_both_candidate_tensors(tmp_path):
    candidate, reference = seeded(UntiedLM(), 1), seeded(TiedLM(), 2)
    weights = harness.map_weights(candidate, reference, ids())
    loaded = harness.load_weight_map(weights.save(tmp_path / "tied.json"))
    loaded.transfer(reference, candidate)
    assert loaded.verified and torch.equal(candidate.out.weight, reference.emb.weight) \
        and torch.equal(candidate.tok.weight, reference.emb.weight), str(loaded)


def test_a_tied_map_twins_the_embedding_with_the_first_candidate_module_only():
    candidate, reference = seeded(UntiedLM(), 1), seeded(TiedLM(), 2)
    chains = tied_map().twin_chains(candidate, reference)
    assert (["tok"], ["emb"]) in chains and not any("out" in cs for cs, _ in chains), chains


# -- a relative-position table shared by every block ------------------------------------------------------
def relative_index() -> torch.Tensor:
    at = torch.arange(TOKENS)
    return at[:, None] - at[None, :] + TOKENS - 1


class Attention(nn.Module):
    """Self-attention whose logits get a bias gathered from a relative-position table: its own, or
    (``own_table`` false) one the model passes in."""

    def __init__(self, own_table: bool = True) -> None:
        super().__init__()
        self.qkv = nn.Linear(C, 3 * C)
        if own_table:
            self.table = nn.Parameter(torch.zeros(2 * TOKENS - 1, HEADS))
        self.proj = nn.Linear(C, C)
        self.register_buffer("index", relative_index(), persistent=False)

    def forward(self, x: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
        table = self.table if table is None else table
        bias = table[self.index].permute(2, 0, 1)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(C // HEADS) + bias, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, C))


class SharedTable(nn.Module):
    """Two attention blocks reading one relative-position table kept by the model."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(2 * TOKENS - 1, HEADS))
        self.blocks = nn.ModuleList([Attention(own_table=False), Attention(own_table=False)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x, self.table)
        return x


class TablePerBlock(nn.Module):
    """The same two blocks, each with a table of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Attention(), Attention()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


def test_a_port_keeping_a_table_per_block_takes_the_references_shared_table_for_each():
    weights = harness.map_weights(seeded(TablePerBlock(), 1), seeded(SharedTable(), 2), tokens())
    found = map_sources(weights)
    assert (found.get("blocks.0.table"), found.get("blocks.1.table"), weights.verified) == (
        ("table",), ("table",), True), str(weights)


# -- one block applied twice against two blocks ------------------------------------------------------------
class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(C)
        self.fc1 = nn.Linear(C, 4 * C)
        self.fc2 = nn.Linear(4 * C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class SharedBlock(nn.Module):
    """One block applied twice (its weights shared), then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(C, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.block(x)))


class TwoBlocks(nn.Module):
    """Two blocks of their own, then a head; ``equal``: the second holds the first's values."""

    def __init__(self, equal: bool = True) -> None:
        super().__init__()
        self.equal = equal
        self.layers = nn.Sequential(Block(), Block())
        self.classifier = nn.Linear(C, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layers(x))


def two_blocks(equal: bool) -> TwoBlocks:
    model = seeded(TwoBlocks(equal), 2)
    if equal:
        model.layers[1].load_state_dict(model.layers[0].state_dict())
    return model


def test_a_block_applied_twice_takes_the_first_reference_blocks_tensors():
    weights = harness.map_weights(seeded(SharedBlock(), 1), two_blocks(equal=True), tokens(), verify=False)
    assert {k: v for k, v in map_sources(weights).items() if k.startswith("block.")} == {
        f"block.{name}": (f"layers.0.{name}",) for name in
        ("norm.weight", "norm.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")}, str(weights)


def test_the_reference_blocks_a_shared_block_stands_for_are_unmatched_feeding_nothing_in_the_candidate():
    weights = harness.map_weights(seeded(SharedBlock(), 1), two_blocks(equal=True), tokens(), verify=False)
    second = [k for k in weights.unmatched["reference"] if k.startswith("layers.1.")]
    assert len(second) == 6 and all("feeds nothing in the candidate" in weights.reason("reference", k)
                                    and "block." in weights.reason("reference", k) for k in second), str(weights)


def test_a_shared_block_map_against_equal_reference_blocks_is_verified_and_the_port_passes():
    candidate, reference = seeded(SharedBlock(), 1), two_blocks(equal=True)
    weights = harness.map_weights(candidate, reference, tokens())
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, tokens(), weights=weights)
    assert (weights.verified, report.passed) == (True, True), f"{weights}\n{report.format()}"


def test_a_shared_block_map_against_reference_blocks_of_their_own_values_is_not_verified():
    weights = harness.map_weights(seeded(SharedBlock(), 1), two_blocks(equal=False), tokens())
    assert weights.verified is False and weights.conflicts, str(weights)


def test_a_failing_comparison_through_a_shared_block_map_says_the_reference_blocks_it_stands_for_may_differ():
    candidate, reference = seeded(SharedBlock(), 1), two_blocks(equal=False)
    weights = harness.map_weights(candidate, reference, tokens(), verify=False)
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, tokens(), weights=weights)
    assert not report.passed and "the candidate applies tensors again where the reference applies 6 tensor(s)" \
        in report.notes[0], report.notes


def test_two_port_blocks_against_one_reference_block_applied_twice_both_take_it_and_are_verified():
    weights = harness.map_weights(seeded(TwoBlocks(equal=False), 1), seeded(SharedBlock(), 2), tokens())
    found = map_sources(weights)
    assert (found.get("layers.0.fc1.weight"), found.get("layers.1.fc1.weight"), weights.verified) == (
        ("block.fc1.weight",), ("block.fc1.weight",), True), str(weights)
