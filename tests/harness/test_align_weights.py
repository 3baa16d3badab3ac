"""Alignment through weights, layout adapters and error origins in models that share no names."""

from __future__ import annotations

import copy

import pytest
import torch

import harness
from harness.adapters import find_adapter
from helpers import inject_forward
from port_toys import (ChannelsFirstPool, ChannelsLastNet, ChannelsLastPool, ConvNet, ConvNormActFused, ConvNormActStack, ConvNormFunctionalAct, FunctionalConvBlock, FusedBlock, Permute, SequentialConvBlock, SharedReluBlock,
                       SplitBlock, TwoReluBlock, feature_maps, images, randomized, tokens)


def transferred(candidate, reference, inputs):
    weights = harness.map_weights(candidate, reference, inputs)
    weights.transfer(reference, candidate)
    return weights


@pytest.fixture
def block_pair():
    candidate, reference = randomized(FusedBlock(), 1), randomized(SplitBlock(), 2)
    return candidate, reference, transferred(candidate, reference, tokens())


def rows_by_candidate(report):
    return {r.candidate: r for r in report.rows}


def test_modules_owning_corresponding_weights_are_twins(block_pair):
    candidate, reference, weights = block_pair
    rows = rows_by_candidate(harness.compare(candidate, reference, tokens(), weights=weights))
    assert {c: (r.reference, r.match.how) for c, r in rows.items() if c in ("norm", "proj", "fc2")} == {
        "norm": ("ln_a", "weights"), "proj": ("out", "weights"), "fc2": ("down", "weights")}


def test_a_fused_projection_is_compared_with_the_concatenated_split_outputs(block_pair):
    candidate, reference, weights = block_pair
    row = rows_by_candidate(harness.compare(candidate, reference, tokens(), weights=weights))["qkv"]
    assert row.reference == "attention.query+attention.key+attention.value" and row.passed


def test_names_differ_so_compare_infers_the_map_by_itself(block_pair):
    candidate, reference, _ = block_pair
    report = harness.compare(candidate, reference, tokens())
    assert report.passed and report.weight_coverage == 1.0, report.format()


def test_a_perturbed_weight_is_blamed_on_its_module(block_pair):
    candidate, reference, weights = block_pair
    with torch.no_grad():
        candidate.fc1.weight.mul_(1.001)
    report = harness.compare(candidate, reference, tokens(), weights=weights)
    assert (report.culprit, report.introduced) == ("fc1", ["fc1"]), report.format()


def test_an_error_in_code_without_a_twin_is_not_blamed_on_a_twin(block_pair):
    candidate, reference, weights = block_pair
    candidate.scale_power = 0.51  # the attention maths lives in the block's own forward
    report = harness.compare(candidate, reference, tokens(), weights=weights)
    assert report.culprit == "<root>" and report.first_divergence == "proj", report.format()


def test_an_untwinned_submodule_is_named_instead_of_its_parent():
    candidate, reference = randomized(FusedBlock(), 1), randomized(SplitBlock(), 2)
    weights = transferred(candidate, reference, tokens())
    candidate.act = torch.nn.GELU(approximate="tanh")  # no twin: the reference calls F.gelu
    report = harness.compare(candidate, reference, tokens(), weights=weights)
    assert report.culprit == "act", report.format()


class _PositionsInEncoder(torch.nn.Module):
    """torchvision's ViT layout: the encoder adds the position table, then runs its layers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(16, 16)
        self.encoder = torch.nn.Module()
        self.encoder.pos = torch.nn.Parameter(torch.zeros(1, 5, 16))
        self.encoder.layers = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 16))
        self.encoder.forward = lambda x: self.encoder.layers(x + self.encoder.pos)

    def forward(self, x):
        return self.encoder(self.embed(x))


class _PositionsInEmbeddings(torch.nn.Module):
    """transformers' layout: the embeddings add the position table, the layers sit at the top."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = torch.nn.Module()
        self.embeddings.proj, self.embeddings.pos = torch.nn.Linear(16, 16), torch.nn.Parameter(torch.zeros(1, 5, 16))
        self.embeddings.forward = lambda x: self.embeddings.proj(x) + self.embeddings.pos
        self.first, self.second = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)

    def forward(self, x):
        return self.second(self.first(self.embeddings(x)))


def test_an_error_in_an_untwinned_encoders_own_code_is_not_blamed_on_its_layers():
    candidate, reference = randomized(_PositionsInEncoder(), 1), randomized(_PositionsInEmbeddings(), 2)
    weights = transferred(candidate, reference, tokens())
    with torch.no_grad():
        candidate.encoder.pos[0, 2, 3] += 0.01
    report = harness.compare(candidate, reference, tokens(), weights=weights)
    # encoder.layers hands its input on unchanged; the add before it is the encoder's own code
    assert report.culprit == "encoder", report.format()


def _two_blocks(candidate_block, reference_block):
    """Two-block models of each layout with the reference's weights transferred into the candidate."""
    candidate = randomized(torch.nn.Sequential(candidate_block(), candidate_block()), 1)
    reference = randomized(torch.nn.Sequential(reference_block(), reference_block()), 2)
    return candidate, reference, transferred(candidate, reference, feature_maps())


def test_a_layer_scale_dropped_in_a_block_with_untwinned_permutes_is_blamed_on_the_block():
    candidate, reference, weights = _two_blocks(SequentialConvBlock, FunctionalConvBlock)
    inject_forward(candidate[1], lambda self, x: self.block(x) + x)
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    # the Permute modules have no twin but compute what the reference computes: they are not the origin
    assert (report.culprit, report.introduced) == ("1", ["1"]), report.format()
    assert report.diagnosis[0]["kind"] == "missing_op" and report.diagnosis[0]["op"] == "mul", report.diagnosis


def test_a_permute_exchanging_h_and_w_of_a_square_map_is_the_culprit():
    candidate, reference, weights = _two_blocks(SequentialConvBlock, FunctionalConvBlock)
    candidate[1].block[1] = Permute(0, 3, 2, 1)  # the permute back then leaves the map transposed
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    assert (report.culprit, report.introduced) == ("1.block.1", ["1.block.1"]), report.format()


def test_a_shared_activation_after_a_dropped_residual_is_not_the_culprit():
    candidate, reference, weights = _two_blocks(SharedReluBlock, TwoReluBlock)
    inject_forward(candidate[1], lambda self, x: self.relu(self.conv2(self.relu(self.conv1(x)))))
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    # relu#1 (paired with act_b by shape only) gives act_b's output from act_b's inputs: it received the error
    assert (report.culprit, report.introduced) == ("1", ["1"]), report.format()
    assert report.diagnosis[0]["kind"] == "missing_op" and report.diagnosis[0]["op"] == "add", report.diagnosis


@pytest.mark.parametrize("stage", [0, 1])
def test_an_error_upstream_of_norms_with_their_activation_inside_has_one_origin(stage):
    candidate, reference = randomized(ConvNormActStack(), 1), randomized(ConvNormActFused(), 2)
    weights = transferred(candidate, reference, feature_maps())
    candidate.norms[stage].eps = 1e-3
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    # each BatchNorm and the SiLU after it are one twin of the fused module, downstream of the error too
    assert report.introduced == [f"norms.{stage}"], report.format()
    first = report.diagnosis[0]
    assert (first["module"], first["op"], first["argument"]) == (f"norms.{stage}", "batch_norm", "eps"), report.diagnosis


def test_a_swapped_activation_module_after_a_norm_is_the_culprit_not_the_norm():
    candidate, reference = randomized(ConvNormActStack(), 1), randomized(ConvNormActFused(), 2)
    weights = transferred(candidate, reference, feature_maps())
    candidate.acts[1] = torch.nn.GELU()
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    assert report.introduced == ["acts.1"], report.format()
    assert report.diagnosis[0]["text"] == ("acts.1: the candidate applies gelu where the reference applies silu "
                                           "(after the module's last operation (batch_norm))"), report.diagnosis


def test_an_activation_applied_after_the_norm_in_the_callers_code_agrees_with_one_inside_the_norm():
    candidate, reference = randomized(ConvNormFunctionalAct(), 1), randomized(ConvNormActFused(), 2)
    weights = transferred(candidate, reference, feature_maps())
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    assert weights.verified and report.passed, report.format()


@pytest.mark.parametrize("stage", ["b", "c"])
def test_an_activation_the_candidate_never_applies_is_blamed_on_the_code_that_should(stage):
    candidate, reference = randomized(ConvNormFunctionalAct(), 1), randomized(ConvNormActFused(), 2)
    weights = transferred(candidate, reference, feature_maps())
    candidate.skip = stage
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    assert not report.passed and report.introduced == ["<root>"], report.format()
    # the candidate has no bn_b.act: its own code (the root's) is where the activation is missing
    text = report.diagnosis[0]["text"]
    assert text.startswith("<root>: silu missing in the candidate") and f"the reference's bn_{stage}.act applies it" \
        in text, report.diagnosis


class _WrappedResidual(torch.nn.Module):
    """torchvision's inverted-residual layout: the convolutions in a ``Sequential`` child, the add in
    the block's own code."""

    def __init__(self, residual: bool = True) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8))
        self.residual = residual

    def forward(self, x):
        return self.layers(x) + x if self.residual else self.layers(x)


class _FlatResidual(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(self.conv(x)) + x


def test_a_dropped_residual_is_blamed_on_the_block_not_on_its_child_that_holds_the_same_weights():
    candidate = randomized(torch.nn.Sequential(_WrappedResidual(), torch.nn.Conv2d(8, 4, 1)), 1)
    reference = randomized(torch.nn.Sequential(_FlatResidual(), torch.nn.Conv2d(8, 4, 1)), 2)
    weights = transferred(candidate, reference, feature_maps())
    candidate[0].residual = False
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    assert report.introduced == ["0"], report.format()
    assert report.diagnosis[0]["op"] == "add" and report.diagnosis[0]["kind"] == "missing_op", report.diagnosis


def test_every_independent_origin_is_listed_in_execution_order(block_pair):
    candidate, reference, weights = block_pair
    with torch.no_grad():
        candidate.proj.bias.add_(1e-3)
        candidate.fc2.bias.add_(1e-3)
    report = harness.compare(candidate, reference, tokens(), weights=weights)
    assert report.introduced == ["proj", "fc2"], report.format()


def test_twins_in_another_layout_are_compared_through_an_adapter():
    candidate, reference = randomized(ChannelsLastNet(), 1), randomized(ConvNet(), 2)
    weights = transferred(candidate, reference, images())
    report = harness.compare(candidate, reference, images(), weights=weights)
    row = rows_by_candidate(report)["classifier"]
    assert report.passed and (row.reference, row.reference_shape, row.adapter) == ("head", (2, 5), "reshape(2, 5)"), report.format()


def test_twins_whose_layouts_differ_but_shapes_coincide_are_compared_through_an_adapter():
    candidate, reference = randomized(ChannelsLastPool(8), 1), randomized(ChannelsFirstPool(8), 2)
    x = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # C == H == W
    report = harness.compare(candidate, reference, x, weights=transferred(candidate, reference, x))
    row = rows_by_candidate(report)["conv"]
    assert report.passed and row.adapter == "permute(0,3,1,2)", report.format()


def test_a_module_that_transposes_a_square_map_is_still_the_culprit():
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)).double()
    candidate = copy.deepcopy(reference)
    # given the reference's layout, it returns H and W swapped: a bug, not another layout
    inject_forward(candidate[0], lambda self, x: self._conv_forward(x, self.weight, self.bias).transpose(2, 3))
    report = harness.compare(candidate, reference, feature_maps())
    assert report.culprit == "0" and rows_by_candidate(report)["0"].adapter is None, report.format()


def test_layout_rows_show_both_shapes_in_json_and_table():
    candidate, reference = randomized(ChannelsLastNet(), 1), randomized(ConvNet(), 2)
    report = harness.compare(candidate, reference, images(), weights=transferred(candidate, reference, images()))
    layer = next(r for r in report.to_dict()["layers"] if r["candidate"] == "classifier")
    assert (layer["shape"], layer["reference_shape"], layer["adapter"]) == ([2, 5, 1, 1], [2, 5], "reshape(2, 5)")
    assert "2x5x1x1 vs 2x5 [reshape(2, 5)]" in report.format(table=True)


def test_a_shape_no_adapter_explains_is_a_visible_failing_row():
    class Wide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 6)

        def forward(self, x):
            return self.lin(x).sum()

    class Other(Wide):
        def forward(self, x):
            return self.lin(x).sum()

    candidate, reference = Wide().double(), Other().double()
    inject_forward(candidate.lin, lambda self, x: torch.nn.functional.linear(x, self.weight, self.bias)[:, :3])
    report = harness.compare(candidate, reference, torch.ones(2, 4, dtype=torch.float64))
    layer = next(r for r in report.to_dict()["layers"] if r["candidate"] == "lin")
    assert (layer["shape"], layer["reference_shape"], layer["adapter"], layer["passed"]) == ([2, 3], [2, 6], None, False)


def test_a_user_adapter_is_applied_to_its_module():
    candidate, reference = randomized(ChannelsLastNet(), 1), randomized(ConvNet(), 2)
    weights = transferred(candidate, reference, images())
    report = harness.compare(candidate, reference, images(), weights=weights,
                             adapters=[(r"^classifier$", lambda t: t.flatten(1))])
    assert rows_by_candidate(report)["classifier"].adapter == "user adapter for /^classifier$/"


@pytest.mark.parametrize("make, description", [
    (lambda x: x.permute(0, 2, 3, 1), "permute(0,2,3,1)"),                  # NCHW -> NHWC
    (lambda x: x.flatten(2).transpose(1, 2), "permute(0,2,3,1) + reshape(2, 16, 3)"),  # map -> tokens
    (lambda x: x[..., None, None], "reshape(2, 3, 4, 4, 1, 1)"),            # unsqueezed
])
def test_find_adapter_recovers_common_layouts(make, description):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    adapter = find_adapter(x, make(x))
    assert adapter is not None and adapter.description == description and torch.equal(adapter.apply(x), make(x))


@pytest.mark.parametrize("make", [lambda x: x.transpose(2, 3), lambda x: x.permute(0, 3, 2, 1)])
def test_find_adapter_never_recovers_a_square_map_with_h_and_w_exchanged(make):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    adapter = find_adapter(x, make(x), same_shape=True)
    assert adapter is None or not torch.equal(adapter.apply(x), make(x)), adapter.description


def test_find_adapter_recovers_shifted_windows():
    x = torch.randn(1, 8, 8, 3, dtype=torch.float64)
    windows = torch.roll(x, (-2, -2), (1, 2)).reshape(1, 2, 4, 2, 4, 3).permute(0, 1, 3, 2, 4, 5).reshape(4, 16, 3)
    adapter = find_adapter(x, windows)
    assert adapter.description == "window partition 4x4 after roll -2" and torch.equal(adapter.apply(x), windows)


def test_rename_rule_that_never_fires_is_reported():
    candidate, reference = randomized(FusedBlock(), 1), randomized(FusedBlock(), 1)
    report = harness.compare(candidate, reference, tokens(), rename=[(r"^blocks\.", "layers.")])
    assert any("never fires" in n for n in report.notes), report.notes


def test_rename_rule_with_a_missing_target_is_reported():
    candidate, reference = randomized(FusedBlock(), 1), randomized(FusedBlock(), 1)
    report = harness.compare(candidate, reference, tokens(), rename=[(r"^fc1$", "mlp.fc1")])
    assert any("'mlp.fc1'" in n and "does not have" in n for n in report.notes), report.notes


def test_rename_accepts_a_callable_replacement():
    candidate, reference = randomized(SplitBlock(), 1), randomized(SplitBlock(), 1)
    report = harness.compare(candidate, reference, tokens(), rename=[(r"^ln_a$", lambda m: m.group(0))])
    assert report.passed


def test_include_and_exclude_filter_each_side():
    candidate, reference = randomized(FusedBlock(), 1), randomized(FusedBlock(), 1)
    report = harness.compare(candidate, reference, tokens(), include={"candidate": "fc", "reference": "fc"}, exclude="fc2")
    assert sorted(r.candidate for r in report.rows) == ["<root>", "fc1"]


def test_a_bad_exclude_regex_names_the_option():
    with pytest.raises(ValueError, match=r"exclude='\('"):
        harness.compare(FusedBlock(), FusedBlock(), tokens().float(), exclude="(")


@pytest.fixture
def no_layouts_remembered(monkeypatch):
    from harness import adapters

    monkeypatch.setattr(adapters, "_AGREED", {})


def _counting_candidates(monkeypatch) -> list[str]:
    from harness import adapters

    tried: list[str] = []
    candidates = adapters._candidates

    def counted(*shapes):
        for adapter in candidates(*shapes):
            tried.append(adapter.description)
            yield adapter

    monkeypatch.setattr(adapters, "_candidates", counted)
    return tried


def test_tensors_that_cannot_agree_in_any_layout_take_the_first_layout_that_fits_unmeasured(monkeypatch, no_layouts_remembered):
    from harness.metrics import tolerance_for

    tried = _counting_candidates(monkeypatch)
    x = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    other = torch.randn(2, 6, 5, 4, 3, dtype=torch.float64) * 10  # downstream of an error: other values
    adapter = find_adapter(x, other, tol=tolerance_for(torch.float64))
    assert tuple(adapter.apply(x).shape) == tuple(other.shape) and len(tried) == 1, tried


def test_the_layout_two_shapes_last_agreed_in_is_tried_first(monkeypatch, no_layouts_remembered):
    x = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    assert find_adapter(x, x.permute(0, 4, 3, 2, 1)) is not None  # found by measuring the candidates
    tried = _counting_candidates(monkeypatch)
    again = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    adapter = find_adapter(again, again.permute(0, 4, 3, 2, 1))
    assert torch.equal(adapter.apply(again), again.permute(0, 4, 3, 2, 1)) and tried == [], tried
