"""The diagnosis between independently written twins: fused against split projections, einsum
against matmul, operands or weights in another place, one-sided biases, renamed submodules."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import harness
from harness.diagnose import attribute_diff, diagnose_modules
from helpers import inject_forward, transferred
from port_toys import FusedBlock, KernelHWIO, SplitBlock, feature_maps, randomized, tokens


@pytest.fixture
def fused_split():
    """The fused-qkv block as candidate, the split query/key/value block as reference, weights transferred."""
    return transferred(randomized(FusedBlock(), 1), randomized(SplitBlock(), 2), tokens())


def _findings(report) -> str:
    return "\n".join(f"{d['kind']} | {d['text']}" for d in report.diagnosis)


def test_a_fused_projection_against_split_ones_leaves_the_real_error_first(fused_split):
    candidate, reference, weights = fused_split
    candidate.scale_power = 0.51
    report = harness.compare(candidate, reference, tokens(), weights=weights)
    first = report.diagnosis[0]
    assert (first["kind"], first["op"], first["argument"]) == ("argument", "scaled_dot_product_attention", "scale"), \
        _findings(report)
    assert not any("qkv" in d["text"] or "features" in d["text"] for d in report.diagnosis), _findings(report)


def test_a_culprit_without_a_twin_is_explained_through_its_twinned_parent(fused_split):
    candidate, reference, weights = fused_split
    candidate.act = nn.GELU(approximate="tanh")  # the reference calls F.gelu: no module to twin
    report = harness.compare(candidate, reference, tokens(), weights=weights)
    assert report.culprit == "act", report.format()
    assert report.diagnosis[0]["text"] == "act: gelu approximate 'tanh' in the candidate, 'none' in the reference", \
        _findings(report)


class Attention(nn.Module):
    """Single-head attention, written with ``F.scaled_dot_product_attention`` or with einsum."""

    def __init__(self, *, key_first: bool = False, einsum: bool = False, scale: float = 0.5) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.key_first, self.einsum, self.scale = key_first, einsum, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.einsum:
            scores = torch.einsum("bnd,bmd->bnm", q, k) * self.scale
            return torch.einsum("bnm,bmd->bnd", scores.softmax(-1), v)
        return F.scaled_dot_product_attention(*((k, q) if self.key_first else (q, k)), v, scale=self.scale)


def _attention_report(**bug) -> harness.ParityReport:
    torch.manual_seed(0)
    reference = nn.Sequential(Attention()).double().eval()
    candidate = nn.Sequential(Attention(**bug)).double().eval()
    candidate.load_state_dict(reference.state_dict())
    return harness.compare(candidate, reference, torch.randn(2, 5, 8, dtype=torch.float64))


def test_an_einsum_attention_is_folded_like_a_matmul_one():
    report = _attention_report(einsum=True, scale=0.3)
    first = report.diagnosis[0]
    assert (first["op"], first["argument"], first["candidate"], first["reference"]) == (
        "scaled_dot_product_attention", "scale", 0.3, 0.5), _findings(report)


def test_operands_passed_in_another_order_are_named():
    report = _attention_report(key_first=True)
    assert report.diagnosis[0]["text"] == ("0: scaled_dot_product_attention operand query holds the reference's key "
                                           "(operands passed in another order?)"), _findings(report)


def _two_linears() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)).double()
    candidate = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)).double()
    candidate.load_state_dict(reference.state_dict())
    return candidate, reference, torch.randn(3, 8, dtype=torch.float64)


def test_a_weight_holding_another_modules_values_names_that_module():
    candidate, reference, x = _two_linears()
    with torch.no_grad():
        first = candidate[0].weight.clone()
        candidate[0].weight.copy_(candidate[2].weight)
        candidate[2].weight.copy_(first)
    report = harness.compare(candidate, reference, x)
    assert report.diagnosis[0]["text"] == "0: linear operand weight holds the reference's 2.weight (swapped weights?)", \
        _findings(report)


def test_a_bias_the_candidate_leaves_out_is_named():
    candidate, reference, x = _two_linears()
    inject_forward(candidate[2], lambda self, x: F.linear(x, self.weight))
    report = harness.compare(candidate, reference, x)
    assert report.diagnosis[0]["text"] == "2: linear bias missing in the candidate; the reference passes bias", \
        _findings(report)


def test_renamed_submodules_are_compared_only_with_modules_of_their_type_and_shapes():
    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q, self.to_k, self.to_v, self.out = (nn.Linear(8, 8) for _ in range(4))

    class Fused(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.proj = nn.Linear(8, 24), nn.Linear(8, 8)

    assert attribute_diff(Split(), Fused(), "attn") == []


def test_settings_that_change_nothing_are_not_findings():
    # a pool keeps its stride as given: 1 against (1, 1) is one stride
    candidate = nn.Sequential(nn.MaxPool2d(3, stride=1), nn.BatchNorm2d(4, momentum=0.01)).eval()
    reference = nn.Sequential(nn.MaxPool2d(3, stride=(1, 1)), nn.BatchNorm2d(4, momentum=0.1)).eval()
    assert attribute_diff(candidate, reference, "stem") == []
    candidate[1].momentum = 0.3
    assert attribute_diff(candidate.train(), reference.train(), "stem")[0]["argument"] == "momentum"


def test_an_eval_mode_batch_norm_finding_names_eps_and_not_momentum():
    candidate = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, eps=1e-3, momentum=0.01)).double().eval()
    reference = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, eps=1e-5, momentum=0.1)).double().eval()
    reference.load_state_dict(candidate.state_dict())
    findings = diagnose_modules(candidate, reference, (feature_maps()[:, :4],), {}, name="stem")
    # the op's argument, then the module setting behind it
    assert [(f["module"], f["kind"], f["argument"]) for f in findings] == [
        ("stem.1", "argument", "eps"), ("stem.1", "attribute", "eps")], [f["text"] for f in findings]


def test_an_in_place_activation_is_no_finding_where_a_dropped_residual_is():
    class Block(nn.Module):
        def __init__(self, inplace: bool, residual: bool) -> None:
            super().__init__()
            self.conv, self.act, self.residual = nn.Conv2d(4, 4, 1), nn.ReLU(inplace=inplace), residual

        def forward(self, x):
            y = self.conv(x)
            return self.act(y + x if self.residual else y)

    candidate, reference = Block(False, residual=False).double().eval(), Block(True, residual=True).double().eval()
    reference.load_state_dict(candidate.state_dict())
    findings = diagnose_modules(candidate, reference, (feature_maps()[:, :4],), {}, name="block")
    assert [(f["kind"], f["op"]) for f in findings if f["kind"] != "attribute"] == [("missing_op", "add")], findings


def test_an_in_place_activation_module_is_no_attribute_finding():
    candidate, reference = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()), nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(inplace=True))
    candidate, reference = candidate.double().eval(), reference.double().eval()
    reference.load_state_dict(candidate.state_dict())
    with torch.no_grad():
        candidate[0].weight[0, 0] += 0.1  # the finding to report, beside the activations' settings
    findings = diagnose_modules(candidate, reference, (feature_maps()[:, :4],), {}, name="block")
    assert not [f for f in findings if f.get("argument") == "inplace"], [f["text"] for f in findings]


def test_a_differing_output_of_another_shape_names_the_shapes_not_a_nan_error():
    from harness.diagnose import _difference

    assert _difference([torch.zeros(2, 4)], [torch.zeros(2, 12)]) == "shape (2, 4) against the reference's (2, 12)"
    assert _difference([torch.zeros(2, 4)], [torch.full((2, 4), 0.5)]) == "max_abs 5.000e-01"


def _hwio_pair():
    """Two HWIO-kernel convs (C_in == C_out: several permutations fit the shapes) against torch convs."""
    candidate = randomized(nn.Sequential(KernelHWIO(8), nn.ReLU(), KernelHWIO(8)), 1)
    reference = randomized(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)), 2)
    weights = harness.map_weights(candidate, reference, feature_maps())
    weights.transfer(reference, candidate)
    return candidate, reference, weights


def test_kernels_stored_hwio_are_mapped_to_the_permutation_that_verifies():
    candidate, reference, weights = _hwio_pair()
    assert weights.verified and harness.compare(candidate, reference, feature_maps(), weights=weights).passed, str(weights)


def test_a_kernel_stored_right_but_passed_in_another_layout_says_so():
    candidate, reference, weights = _hwio_pair()
    candidate[2].order = (3, 2, 1, 0)  # kh and kw swapped when passed to the conv
    report = harness.compare(candidate, reference, feature_maps(), weights=weights)
    assert report.culprit == "2", report.format()
    assert report.diagnosis[0]["text"].startswith(
        "2: conv2d operand kernel is stored right (as the weight map puts it) but passed in another layout than the "
        "reference's weight"), _findings(report)


def test_a_norm_in_train_mode_is_named_without_its_statistics_updates():
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1)).double().eval()
    candidate = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1)).double().eval()
    candidate.load_state_dict(reference.state_dict())
    candidate[1].train()
    report = harness.compare(candidate, reference, feature_maps())
    assert report.culprit == "1", report.format()
    texts = [d["text"] for d in report.diagnosis]
    assert any("training True in the candidate, False in the reference" in t for t in texts), texts
    assert not any("running_mean" in t or "running_var" in t or "num_batches_tracked" in t for t in texts), texts


class MaskedAttention(nn.Module):
    """Attention written out with a causal mask filled in before the softmax."""

    def __init__(self, use_mask: bool = True) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.use_mask = use_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(-1, -2) * 8 ** -0.5
        if self.use_mask:
            causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        return scores.softmax(-1) @ self.v(x)


def test_a_dropped_attention_mask_is_named():
    torch.manual_seed(0)
    reference = nn.Sequential(MaskedAttention()).double()
    candidate = nn.Sequential(MaskedAttention(use_mask=False)).double()
    candidate.load_state_dict(reference.state_dict())
    report = harness.compare(candidate, reference, torch.randn(1, 5, 8, dtype=torch.float64))
    assert report.diagnosis[0]["text"] == ("0: scaled_dot_product_attention attn_mask False in the candidate, True in "
                                           "the reference"), _findings(report)
