"""harness.map_weights: the weight correspondence of independently written models, inferred."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import harness
from port_toys import (AddmmMlp, ChannelsLastNet, ChannelsLastPatches, ConvNet, ConvNormActFused, ConvNormActStack, ConvPatches,
                       BottleneckFirst, BottleneckLast, FunctionalHWIONet, FusedAttention, FusedBlock, MatmulMlp, ShortcutFirst, ShortcutLast, SplitBlock,
                       TransposedAttention,
                       conv_bn, feature_maps, images, randomized, tokens)


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def entry(weights: harness.WeightMap, key: str):
    return next(e for e in weights.entries if e.candidate == key)


@pytest.fixture
def fused_from_split():
    candidate, reference = randomized(FusedBlock(), 1), randomized(SplitBlock(), 2)
    return candidate, reference, harness.map_weights(candidate, reference, tokens())


def test_fused_qkv_is_the_concatenation_of_the_split_projections(fused_from_split):
    _, _, weights = fused_from_split
    e = entry(weights, "qkv.weight")
    assert e.reference == ("attention.query.weight", "attention.key.weight", "attention.value.weight"), str(weights)
    assert e.steps[0]["op"] == "concat", str(weights)


def test_split_projections_are_slices_of_the_fused_one():
    candidate, reference = randomized(SplitBlock(), 1), randomized(FusedBlock(), 2)
    weights = harness.map_weights(candidate, reference, tokens())
    cuts = [(entry(weights, f"attention.{n}.weight").steps[-1]["start"], entry(weights, f"attention.{n}.weight").reference)
            for n in ("query", "key", "value")]
    assert cuts == [(0, ("qkv.weight",)), (16, ("qkv.weight",)), (32, ("qkv.weight",))], str(weights)


def test_conv1x1_weight_is_reshaped_into_a_linear_weight(fused_from_split):
    _, _, weights = fused_from_split
    e = entry(weights, "fc1.weight")
    assert (e.reference, e.transform) == (("up.weight",), "reshape(shape=[48, 16])"), str(weights)


def test_parameters_used_in_functional_code_are_placed(fused_from_split):
    _, _, weights = fused_from_split
    assert entry(weights, "gamma").reference == ("scale",), str(weights)


def test_every_parameter_is_covered_and_the_map_verified(fused_from_split):
    _, _, weights = fused_from_split
    assert (weights.coverage, weights.unmatched, weights.verified) == (1.0, {"candidate": [], "reference": []}, True), str(weights)


def test_transferred_pair_agrees_in_float64(fused_from_split):
    candidate, reference, weights = fused_from_split
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, tokens(), weights=weights)
    assert report.passed, report.format()


def test_map_weights_changes_neither_model():
    candidate, reference = randomized(FusedBlock(), 1), randomized(SplitBlock(), 2)
    before_c, before_r = copy.deepcopy(candidate), copy.deepcopy(reference)
    harness.map_weights(candidate, reference, tokens())
    assert state_equal(candidate, before_c) and state_equal(reference, before_r)


def test_map_weights_leaves_models_in_training_mode_with_their_batch_norm_statistics():
    candidate, reference = randomized(ConvNet(), 1).train(), randomized(ConvNet(), 2).train()
    before_c, before_r = copy.deepcopy(candidate), copy.deepcopy(reference)
    harness.map_weights(candidate, reference, images())
    assert state_equal(candidate, before_c) and state_equal(reference, before_r), \
        "map_weights updated the running statistics of a model in training mode"
    assert candidate.training and reference.training


def test_the_table_read_backward_gives_the_reference_state(fused_from_split):
    candidate, reference, weights = fused_from_split
    weights.transfer(reference, candidate)
    back = weights.to_reference(candidate.state_dict())
    assert back.keys() == reference.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in reference.state_dict().items())


def test_saved_map_loads_to_the_same_table(fused_from_split, tmp_path):
    _, _, weights = fused_from_split
    path = weights.save(tmp_path / "map.json")
    loaded = harness.load_weight_map(path)
    assert loaded.to_dict() == json.loads(json.dumps(weights.to_dict()))


def test_a_foreign_json_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"weights": []}')
    with pytest.raises(ValueError, match=r"other\.json.*is not a weight map"):
        harness.load_weight_map(path)


def test_order_of_use_ambiguity_is_resolved_by_running_both_models():
    # key computed before query on the reference side: the in-order guess swaps them, the run does not
    candidate, reference = randomized(SplitBlock(), 1), randomized(SplitBlock(key_first=True), 2)
    weights = harness.map_weights(candidate, reference, tokens())
    assert entry(weights, "attention.query.weight").reference == ("attention.query.weight",), str(weights)
    assert weights.verified, str(weights)


def test_a_map_that_makes_twins_disagree_is_reported_not_accepted():
    candidate, reference = randomized(FusedBlock(eps=1e-3), 1), randomized(SplitBlock(), 2)
    weights = harness.map_weights(candidate, reference, tokens())
    assert weights.verified is False and [c["module"] for c in weights.conflicts] == ["norm"], str(weights)


def test_a_conflict_from_a_setting_names_the_setting():
    candidate, reference = randomized(FusedBlock(eps=1e-3), 1), randomized(SplitBlock(), 2)
    weights = harness.map_weights(candidate, reference, tokens())
    assert [c["text"] for c in weights.conflicts] == [
        "after transfer, norm disagrees with its reference twin (the twins differ in eps 0.001 (reference 1e-06), "
        "which no choice of weights can make up)"], str(weights)


def test_a_conflict_from_a_setting_spends_no_verification_run_on_other_weights(monkeypatch):
    tried = []
    alternatives = harness.weights._alternatives
    monkeypatch.setattr(harness.weights, "_alternatives", lambda w, module: tried.append(module) or alternatives(w, module))
    candidate, reference = randomized(FusedBlock(eps=1e-3), 1), randomized(SplitBlock(), 2)
    harness.map_weights(candidate, reference, tokens())
    assert tried == []


def test_a_setting_of_a_norm_joined_with_its_activation_is_named():
    # torchvision's BatchNorm + SiLU modules against timm's norm holding its activation
    candidate, reference = randomized(ConvNormActStack(), 1), randomized(ConvNormActFused(), 2)
    candidate.norms[1].eps = 1e-3
    weights = harness.map_weights(candidate, reference, feature_maps())
    assert [(c["module"], "eps 0.001 (reference 1e-05)" in c["text"]) for c in weights.conflicts] == [
        ("norms.1", True)], str(weights)


def test_batchnorm_statistics_and_counter_are_mapped_and_index_buffers_are_not():
    candidate, reference = randomized(ChannelsLastNet(), 1), randomized(ConvNet(), 2)
    weights = harness.map_weights(candidate, reference, images())
    sources = {e.candidate: e.reference for e in weights.entries}
    assert sources["stem.1.running_var"] == ("bn.running_var",), str(weights)
    assert sources["stem.1.num_batches_tracked"] == ("bn.num_batches_tracked",), str(weights)
    assert weights.computed["candidate"] == ["pixel_index"], str(weights)


class _TableBias(nn.Module):
    """A linear layer plus a fixed table built from its size: kept in the checkpoint or not."""

    def __init__(self, persistent: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.register_buffer("coords", torch.linspace(-1, 1, 16).sign() * torch.linspace(0, 1, 16).log1p(),
                             persistent=persistent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.coords


def test_a_floating_table_both_models_build_alike_is_computed_not_a_weight():
    candidate, reference = _TableBias(persistent=True).double().eval(), _TableBias(persistent=False).double().eval()
    weights = harness.map_weights(candidate, reference, tokens())
    assert (weights.computed["candidate"], weights.unmatched["candidate"], weights.verified) == (["coords"], [], True), \
        str(weights)


class _FrozenNorm(nn.Module):
    """detectron2's FrozenBatchNorm2d: weight, bias and statistics all buffers, read by F.batch_norm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((channels,), value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, 1e-5)


def test_a_frozen_norm_keeping_its_weight_and_bias_as_buffers_takes_the_reference_norms_parameters():
    candidate = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _FrozenNorm(8), nn.ReLU()).double().eval()
    reference = randomized(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()), 2)
    weights = harness.map_weights(candidate, reference, images())
    sources = {e.candidate: e.reference for e in weights.entries}
    assert (sources.get("1.weight"), sources.get("1.bias"), weights.verified) == (("1.weight",), ("1.bias",), True), \
        str(weights)


def test_channel_scale_and_conv_head_take_other_layouts():
    candidate, reference = randomized(ChannelsLastNet(), 1), randomized(ConvNet(), 2)
    weights = harness.map_weights(candidate, reference, images())
    assert entry(weights, "gain").transform == "reshape(shape=[8])", str(weights)
    assert entry(weights, "classifier.weight").transform == "reshape(shape=[5, 8, 1, 1])", str(weights)


def test_a_tensor_without_counterpart_is_listed_with_its_reason():
    class Extra(FusedBlock):
        def __init__(self) -> None:
            super().__init__()
            self.unused_head = nn.Linear(16, 7)

    candidate, reference = randomized(Extra(), 1), randomized(SplitBlock(), 2)
    weights = harness.map_weights(candidate, reference, tokens())
    assert weights.unmatched["candidate"] == ["unused_head.weight", "unused_head.bias"], str(weights)
    assert "never used by the forward" in weights.reasons["unused_head.weight"]
    assert weights.coverage == pytest.approx(1 - (16 * 7 + 7) / sum(p.numel() for p in candidate.parameters()))


def test_transfer_clears_caches_derived_from_weights():
    class Cached(FusedBlock):
        def __init__(self) -> None:
            super().__init__()
            self.attention_bias_cache = {"stale": torch.zeros(1)}

    candidate, reference = randomized(Cached(), 1), randomized(SplitBlock(), 2)
    harness.map_weights(candidate, reference, tokens(), verify=False).transfer(reference, candidate)
    assert candidate.attention_bias_cache == {}


def test_transfer_refuses_a_map_made_for_another_model(fused_from_split):
    _, _, weights = fused_from_split
    with pytest.raises(ValueError, match="does not have"):
        weights.transfer(randomized(SplitBlock(), 2), randomized(ConvNet(), 3))


def test_a_map_naming_tensors_the_candidate_no_longer_has_leaves_those_entries_out_and_says_so(fused_from_split):
    candidate, reference, weights = fused_from_split
    weights.transfer(reference, candidate)
    edited = copy.deepcopy(candidate)
    edited.fc1 = nn.Sequential(edited.fc1, nn.Tanh())  # the port changed since the map was made
    report = harness.compare(edited, reference, tokens(), weights=weights)
    assert not report.passed and report.notes[0].startswith(
        "the weight map names 2 candidate tensor(s) the candidate does not have or holds in another shape "
        "(fc1.weight, fc1.bias): those entries were left out"), report.format()
    assert report.culprit == "fc1.1", report.format()  # the Tanh added since the map was made


def test_map_weights_names_a_non_module_argument():
    with pytest.raises(TypeError, match="candidate must be an nn.Module, got str"):
        harness.map_weights("model.pt", SplitBlock(), tokens())


def test_a_key_both_models_leave_unmatched_keeps_each_sides_reason():
    def model(width):
        return torch.nn.Sequential(torch.nn.Linear(4, width, bias=False), torch.nn.Linear(width, 2, bias=False)).double()

    weights = harness.map_weights(model(6), model(5), torch.randn(1, 4, dtype=torch.float64))
    assert "(6, 4)" in weights.reason("candidate", "0.weight"), weights.reasons
    assert "(5, 4)" in weights.reason("reference", "0.weight"), weights.reasons


def test_a_patch_embedding_flattened_channels_last_is_mapped_and_reads_back():
    candidate, reference = randomized(ChannelsLastPatches(), 1), randomized(ConvPatches(), 2)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    assert weights.verified, str(weights)
    assert weights.entries[0].transform == "permute(dims=[0, 2, 3, 1]) + reshape(shape=[8, 48])", str(weights)
    weights.transfer(reference, candidate)
    back = weights.to_reference(dict(candidate.named_parameters()))
    assert torch.equal(back["proj.weight"], reference.proj.weight), "the table read backward does not restore the kernel"


class _HeadSplitQKV(nn.Module):
    """Attention projections stored (3, heads, head_dim, C) and (3, heads, head_dim), applied by einsum."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.wqkv = nn.Parameter(torch.randn(3, heads, dim // heads, dim))
        self.bqkv = nn.Parameter(torch.randn(3, heads, dim // heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (torch.einsum("bnc,hdc->bhnd", x, self.wqkv[i]) + self.bqkv[i][:, None] for i in range(3))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


class _FlatQKV(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.qkv = heads, nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


def test_a_qkv_stored_split_by_heads_is_a_reshape_of_a_flat_one():
    candidate, reference = randomized(_FlatQKV(), 1), randomized(_HeadSplitQKV(), 2)
    weights = harness.map_weights(candidate, reference, tokens())
    assert [(e.candidate, e.reference, e.transform) for e in weights.entries] == [
        ("qkv.weight", ("wqkv",), "reshape(shape=[48, 16])"), ("qkv.bias", ("bqkv",), "reshape(shape=[48])")], str(weights)
    assert weights.verified, str(weights)


def test_norms_misplaced_in_a_cycle_of_three_units_follow_their_convs():
    # leftovers paired by shape alone: each unit's conv came from the right reference unit, its
    # norm from the next one's (a shortcut run first on one side, last on the other)
    from harness.weights import Entry, _cohere

    def unit(cand: str, conv: str, norm: str) -> list[Entry]:
        return [Entry(f"{cand}.0.weight", (f"{conv}.conv.weight",), (), (8, 8, 1, 1), ((8, 8, 1, 1),)),
                Entry(f"{cand}.1.weight", (f"{norm}.bn.weight",), (), (8,), ((8,),))]

    entries = unit("b.proj", "down", "c1") + unit("b.f.a", "c1", "c3") + unit("b.f.c", "c3", "down")
    norms = {e.candidate: e.reference[0] for e in _cohere(entries) if e.candidate.endswith("1.weight")}
    assert norms == {"b.proj.1.weight": "down.bn.weight", "b.f.a.1.weight": "c1.bn.weight",
                     "b.f.c.1.weight": "c3.bn.weight"}, norms


def _verified_and_passing(candidate: nn.Module, reference: nn.Module, x: torch.Tensor) -> tuple[harness.WeightMap, bool]:
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    return weights, harness.compare(candidate, reference, x, weights=weights).passed


def test_a_square_1x1_kernel_permuted_where_it_is_used_is_mapped_through_that_permute():
    reference = randomized(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1)), 2)
    weights, passed = _verified_and_passing(randomized(FunctionalHWIONet(), 1), reference, images())
    assert entry(weights, "w1").steps == ({"op": "permute", "dims": [2, 3, 1, 0]},), str(weights)
    assert weights.verified and passed, str(weights)


def test_split_projections_transposed_where_they_are_used_are_transposed_slices_of_the_fused_one():
    weights, passed = _verified_and_passing(randomized(TransposedAttention(), 1), randomized(FusedAttention(), 2), tokens())
    assert entry(weights, "wk").steps == ({"op": "slice", "dim": 0, "start": 16, "stop": 32},
                                          {"op": "transpose", "dims": [0, 1]}), str(weights)
    assert weights.verified and passed, str(weights)


def test_a_square_output_projection_transposed_where_it_is_used_is_mapped_transposed():
    weights, _ = _verified_and_passing(randomized(TransposedAttention(), 1), randomized(FusedAttention(), 2), tokens())
    assert entry(weights, "wo").steps == ({"op": "transpose", "dims": [0, 1]},), str(weights)


@pytest.mark.parametrize("mlp", [MatmulMlp, AddmmMlp], ids=["x @ W + b", "addmm(b, x, W)"])
def test_square_matrices_read_as_the_right_operand_of_a_matrix_product_are_linear_weights_transposed(mlp):
    reference = randomized(nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 16)), 2)
    weights, passed = _verified_and_passing(randomized(mlp(), 1), reference, tokens())
    assert [entry(weights, k).steps for k in ("w1", "w2")] == [({"op": "transpose", "dims": [0, 1]},)] * 2, str(weights)
    assert weights.verified and passed, str(weights)


class _Scaled(nn.Module):
    """A linear layer and a learned output scale the reference does not have."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.alpha = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.alpha


def test_a_map_leaving_out_a_tensor_the_forward_reads_is_not_verified_though_the_candidate_holds_its_right_value():
    reference = randomized(nn.Sequential(nn.Linear(16, 16)), 2)
    candidate = _Scaled().double().eval()
    candidate.fc.load_state_dict(reference[0].state_dict())  # a finished conversion; alpha is 1, as it must be
    weights = harness.map_weights(candidate, reference, tokens())
    assert not weights.verified and weights.unmatched["candidate"] == ["alpha"], str(weights)
    assert any("alpha" in c["text"] and "no counterpart" in c["text"] for c in weights.conflicts), weights.conflicts


def test_a_module_reading_a_tensor_the_map_leaves_out_gets_no_other_choice_of_weights(monkeypatch):
    tried = []
    alternatives = harness.weights._alternatives
    monkeypatch.setattr(harness.weights, "_alternatives", lambda w, module: tried.append(module) or alternatives(w, module))
    harness.map_weights(_Scaled().double().eval(), randomized(nn.Sequential(nn.Linear(16, 16)), 2), tokens())
    assert tried == [], f"alternatives tried around {tried}, whose unfilled tensor no choice of weights can fill"


def test_verification_leaves_the_candidate_as_it_was():
    reference = randomized(nn.Sequential(nn.Linear(16, 16)), 2)
    candidate = _Scaled().double().eval()
    before = copy.deepcopy(candidate)
    harness.map_weights(candidate, reference, tokens())
    assert state_equal(candidate, before)


def test_an_exchange_is_made_in_the_later_blocks_while_an_earlier_block_is_still_wrong():
    # the first stage's block has three same-shaped 1x1 kernels (a cycle of three misplaced units);
    # the exchange that fixes its shortcut fixes the later stages too, while it is still wrong
    widths = [(8, 8), (8, 16), (16, 32)]
    candidate = randomized(nn.Sequential(*(BottleneckFirst(i, o) for i, o in widths)), 1)
    reference = randomized(nn.Sequential(*(BottleneckLast(i, o) for i, o in widths)), 2)
    weights = harness.map_weights(candidate, reference, feature_maps())
    assert weights.verified, str(weights)
    assert weights.notes[:2] == ["ambiguous order of use around 0.proj.0 resolved by running both models",
                                 "the same exchange made in the other blocks built like 0"], weights.notes


def test_a_shortcut_run_before_the_main_branch_is_mapped_by_exchanging_whole_conv_norm_units():
    candidate, reference = randomized(ShortcutFirst(), 1), randomized(ShortcutLast(), 2)
    weights = harness.map_weights(candidate, reference, feature_maps()[:, :4])
    assert weights.verified and entry(weights, "shortcut.0.weight").reference == ("downsample.0.weight",), str(weights)


def test_verification_never_exchanges_two_batch_norm_counters_alone():
    from harness.weights import _subtree_swaps

    # two norms of different widths: their counters are the only tensors of one shape
    def model(seed: int) -> nn.Module:
        return randomized(nn.Sequential(conv_bn(4, 8, 1), conv_bn(8, 16, 1)), seed)

    entries = harness.map_weights(model(1), model(2), feature_maps()[:, :4], verify=False).entries
    swaps = _subtree_swaps(entries, list(range(len(entries))), "", "")
    alone = [tuple(entries[k].candidate for k in swap[0]) for _, _, swap in swaps if len(swap) == 1]
    assert not [pair for pair in alone if pair[0].endswith("num_batches_tracked")], alone


class _Scores(nn.Module):
    """Token scores through a softmax, computed in ``dtype`` when given."""

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.proj, self.dtype = nn.Linear(16, 16), dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).softmax(-1, dtype=self.dtype).to(x.dtype)


def test_a_conflict_where_no_setting_differs_names_what_the_diagnosis_finds():
    # a float16 softmax: one in float32 is judged against the port's own rounding and verifies
    candidate, reference = randomized(_Scores(torch.float16), 1), randomized(_Scores(), 2)
    weights = harness.map_weights(candidate, reference, tokens())
    assert not weights.verified
    texts = [c["text"] for c in weights.conflicts]
    assert len(texts) == 1 and texts[0].startswith("after transfer, <root> disagrees with its reference twin (the "
                                                   "diagnosis: <root>: ") \
        and "dtype 'float16' in the candidate, None in the reference" in texts[0], weights.conflicts


class _ChannelNorm(nn.Module):
    """The channels normalized per position (a channels-first layer norm) or, as a port may slip,
    by ``group_norm`` of one group (over channels and positions together)."""

    def __init__(self, group_norm: bool) -> None:
        super().__init__()
        self.weight, self.bias, self.group_norm = nn.Parameter(torch.ones(8)), nn.Parameter(torch.zeros(8)), group_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.group_norm:
            return F.group_norm(x, 1, self.weight, self.bias, 1e-6)
        return F.layer_norm(x.permute(0, 2, 3, 1), (8,), self.weight, self.bias, 1e-6).permute(0, 3, 1, 2)


def test_a_twin_computing_another_operation_is_given_no_other_choice_of_weights(monkeypatch):
    tried: list[str] = []
    alternatives = harness.weights._alternatives
    monkeypatch.setattr(harness.weights, "_alternatives", lambda w, module: (tried.append(module), alternatives(w, module))[1])
    candidate, reference = randomized(nn.Sequential(nn.Conv2d(3, 8, 3), _ChannelNorm(group_norm=True)), 1), \
        randomized(nn.Sequential(nn.Conv2d(3, 8, 3), _ChannelNorm(group_norm=False)), 2)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    assert not weights.verified and not tried, f"weight choices tried around {tried}: {weights}"
    assert "applies group_norm where the reference applies layer_norm" in weights.conflicts[0]["text"], str(weights)


class _Gated(nn.Module):
    """Two square linears of different sizes and a gate the reference does not have: no layout of
    either matrix helps."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 16), nn.Linear(16, 8, bias=False), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.fc2(torch.sigmoid(self.fc1(x))) * 0.5)


def test_verification_compares_no_matrix_layout_that_leaves_the_failing_module_failing(monkeypatch):
    import harness.api

    reference = randomized(nn.Sequential(nn.Linear(16, 16), nn.Sigmoid(), nn.Linear(16, 8, bias=False), nn.Linear(8, 8)), 2)
    comparisons = []
    compare = harness.api.compare
    monkeypatch.setattr(harness.api, "compare", lambda *a, **k: comparisons.append(1) or compare(*a, **k))
    weights = harness.map_weights(_Gated().double().eval(), reference, tokens())
    # the map as it stands, and once more for the diagnosis of what differs: each transposed
    # matrix is judged by re-running the failing module alone
    assert not weights.verified and len(comparisons) == 2, f"{len(comparisons)} comparisons: {weights.notes}"


def test_a_shortcut_run_first_is_found_for_a_conv_nested_in_a_unit_in_the_branch_of_a_nested_block():
    # the failing conv sits three modules below the block holding the shortcut (stage.block.branch.unit.conv)
    candidate = randomized(nn.Sequential(nn.Sequential(ShortcutFirst())), 1)
    reference = randomized(nn.Sequential(ShortcutLast()), 2)
    weights = harness.map_weights(candidate, reference, feature_maps()[:, :4])
    assert weights.verified and entry(weights, "0.0.shortcut.0.weight").reference == ("0.downsample.0.weight",), \
        str(weights)
