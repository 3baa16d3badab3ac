"""Ports that spell one computation another way: ``x @ W + b`` for a linear, a global adaptive pool for
a mean, a channels-last layer scale for a channels-first one. The diagnosis names the real error and
no spelling; operands are compared in whatever layout each side passes them."""

import torch
from torch import nn
from torch.nn import functional as F

from harness.diagnose import diagnose_modules, record_ops
from port_toys import feature_maps, randomized, tokens
from helpers import findings_text


def _ops(findings: list[dict]) -> list[dict]:
    """The findings about operations (attribute diffs of differently built modules left out)."""
    return [f for f in findings if f["kind"] != "attribute"]


class ScaleChannelsFirst(nn.Module):
    """A layer scale stored ``(C,)`` and applied viewed ``(1, C, 1, 1)`` on NCHW."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(self.gamma.reshape(1, -1, 1, 1))


class ScaleChannelsLast(nn.Module):
    """The same layer scale applied as it is stored (``(C,)`` or ``(1, 1, 1, C)``), from the left, on NHWC."""

    def __init__(self, channels: int = 8, *, shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.layer_scale = nn.Parameter(torch.ones(shape or (channels,)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.layer_scale * x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_a_scale_applied_in_another_layout_is_named_when_its_values_differ():
    candidate, reference = randomized(ScaleChannelsLast(), 1), randomized(ScaleChannelsFirst(), 2)
    with torch.no_grad():
        candidate.layer_scale.copy_(reference.gamma)
        candidate.layer_scale[3] *= 1.01
    findings = diagnose_modules(candidate, reference, (feature_maps(),), {}, name="block")
    assert findings and findings[0]["text"].startswith(
        "block: mul operand layer_scale holds other values than the reference's gamma (max_abs difference"), \
        findings_text(findings)


def test_a_scale_applied_in_another_layout_with_the_same_values_is_no_finding():
    candidate, reference = randomized(ScaleChannelsLast(), 1), randomized(ScaleChannelsFirst(), 2)
    with torch.no_grad():
        candidate.layer_scale.copy_(reference.gamma)
    assert _ops(diagnose_modules(candidate, reference, (feature_maps(),), {}, name="block")) == []


def test_an_operand_stored_in_another_shape_is_compared_in_one_layout():
    candidate, reference = randomized(ScaleChannelsLast(shape=(1, 1, 1, 8)), 1), randomized(ScaleChannelsFirst(), 2)
    with torch.no_grad():
        candidate.layer_scale.copy_(reference.gamma.reshape(1, 1, 1, 8))
        candidate.layer_scale[..., 3] += 0.5
    findings = diagnose_modules(candidate, reference, (feature_maps(),), {}, name="block")
    assert findings and findings[0]["text"] == (
        "block: mul operand layer_scale holds other values than the reference's gamma (max_abs difference 5.000e-01)"), \
        findings_text(findings)


class MlpAsMatmul(nn.Module):
    """An MLP written ``x @ W + b`` with its weights stored ``(in, out)``."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.zeros(16, 32)), nn.Parameter(torch.zeros(32))
        self.w2, self.b2 = nn.Parameter(torch.zeros(32, 16)), nn.Parameter(torch.zeros(16))
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x @ self.w1 + self.b1, approximate=self.approximate) @ self.w2 + self.b2


def _mlp_pair(approximate: str) -> tuple[nn.Module, nn.Module]:
    reference = randomized(nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)), 2)
    candidate = randomized(MlpAsMatmul(approximate), 1)
    with torch.no_grad():
        for w, b, linear in ((candidate.w1, candidate.b1, reference[0]), (candidate.w2, candidate.b2, reference[2])):
            w.copy_(linear.weight.t())
            b.copy_(linear.bias)
    return candidate, reference


def test_a_matmul_by_a_weight_plus_a_bias_is_a_linear_and_no_finding():
    candidate, reference = _mlp_pair("tanh")
    findings = _ops(diagnose_modules(candidate, reference, (tokens(),), {}, name="mlp"))
    assert [(f["op"], f["argument"]) for f in findings] == [("gelu", "approximate")], findings_text(findings)


def test_a_bias_added_after_a_matmul_is_named_as_the_linears_bias():
    candidate, reference = _mlp_pair("none")
    with torch.no_grad():
        candidate.b2[0] += 0.1
    findings = diagnose_modules(candidate, reference, (tokens(),), {}, name="mlp")
    assert findings and findings[0]["text"].startswith(
        "mlp: linear operand b2 holds other values than the reference's 2.bias"), findings_text(findings)


class GlobalPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, (1, 1))


def test_a_global_average_pool_records_as_a_mean_over_its_spatial_dims():
    _, stream, _ = record_ops(GlobalPool(), (feature_maps(),), {})
    assert [(op.name, op.args.get("dim"), op.args.get("keepdim")) for op in stream] == [("mean", (2, 3), True)], \
        [(op.name, op.args) for op in stream]


def test_an_average_pool_to_a_larger_size_stays_a_pool():
    pool = nn.AdaptiveAvgPool2d(2)
    _, stream, _ = record_ops(pool, (feature_maps(),), {})
    assert [op.name for op in stream] == ["adaptive_avg_pool2d"], [(op.name, op.args) for op in stream]


class PoolThenAct(nn.Module):
    """A global pool, flattened, then a GELU: the pool spelled as a pool or as a mean without kept dims."""

    def __init__(self, as_mean: bool, approximate: str = "none") -> None:
        super().__init__()
        self.as_mean, self.approximate = as_mean, approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean((2, 3)) if self.as_mean else F.adaptive_avg_pool2d(x, 1).flatten(1)
        return F.gelu(pooled, approximate=self.approximate)


def test_a_mean_that_drops_its_dims_is_no_finding_against_a_pool_that_keeps_them():
    findings = _ops(diagnose_modules(PoolThenAct(as_mean=False, approximate="tanh"), PoolThenAct(as_mean=True),
                                     (feature_maps(),), {}, name="head"))
    assert [(f["op"], f["argument"]) for f in findings] == [("gelu", "approximate")], findings_text(findings)


class Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _relu6(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x)


def _hardtanh6(x: torch.Tensor) -> torch.Tensor:
    return F.hardtanh(x, 0.0, 6.0)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def test_an_equivalent_spelling_replaced_next_to_the_bug_is_no_finding():
    # relu6 is hardtanh(0, 6): in the place of the reference's op it gives the same result
    candidate = nn.Sequential(Lambda(_relu6), Lambda(_gelu_tanh)).double()
    reference = nn.Sequential(Lambda(_hardtanh6), Lambda(F.silu)).double()
    findings = _ops(diagnose_modules(candidate, reference, (tokens(),), {}, name="block"))
    assert [f["module"] for f in findings] == ["block.1"], findings_text(findings)


def test_a_module_after_the_bug_that_only_receives_its_error_is_not_blamed():
    candidate = nn.Sequential(nn.Linear(16, 16), Lambda(F.relu), Lambda(_relu6), nn.Linear(16, 16)).double()
    reference = nn.Sequential(nn.Linear(16, 16), Lambda(F.silu), Lambda(_hardtanh6), nn.Linear(16, 16)).double()
    reference.load_state_dict(candidate.state_dict())
    findings = _ops(diagnose_modules(candidate, reference, (tokens(),), {}, name="block"))
    assert [f["module"] for f in findings] == ["block.1"], findings_text(findings)


class PermuteAs(nn.Module):
    """A channels-last round trip whose first permute is given as ``spell`` spells it."""

    def __init__(self, spell) -> None:
        super().__init__()
        self.norm, self.spell = nn.LayerNorm(8), spell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.spell(x)).permute(0, 3, 1, 2)


def test_permute_dims_given_one_by_one_or_as_a_list_are_one_argument():
    candidate = randomized(PermuteAs(lambda x: torch.permute(x, [0, 3, 2, 1])), 1)  # H and W exchanged
    reference = randomized(PermuteAs(lambda x: x.permute(0, 2, 3, 1)), 1)
    texts = findings_text(_ops(diagnose_modules(candidate, reference, (feature_maps(),), {}, name="block")))
    assert "permute dims (0, 3, 2, 1) in the candidate, (0, 2, 3, 1) in the reference" in texts, texts


class PaddedConv(nn.Module):
    """A 3x3 convolution padded by ``pad`` (``F.pad``'s order) or by its own ``padding``, then ``act``."""

    def __init__(self, *, pad: tuple[int, ...] | None = None, act=F.gelu) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=0 if pad is not None else 1)
        self.pad, self.act = pad, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(F.pad(x, self.pad) if self.pad is not None else x))


def test_a_zero_pad_read_by_an_unpadded_conv_is_that_convs_padding():
    # a convolution before it too: the two streams then pair one conv with the other's pad
    candidate = randomized(nn.Sequential(nn.Conv2d(8, 8, 1), PaddedConv(pad=(1, 1, 1, 1), act=F.relu)), 1)
    reference = randomized(nn.Sequential(nn.Conv2d(8, 8, 1), PaddedConv()), 1)
    texts = findings_text(_ops(diagnose_modules(candidate, reference, (feature_maps(),), {}, name="block")))
    assert "relu" in texts and "pad" not in texts, f"the explicit padding is blamed, not the activation:\n{texts}"


def test_a_pad_unequal_on_the_two_sides_of_a_dim_is_named_as_the_convs_padding():
    candidate, reference = randomized(PaddedConv(pad=(0, 2, 0, 2)), 1), randomized(PaddedConv(), 1)
    texts = findings_text(_ops(diagnose_modules(candidate, reference, (feature_maps(),), {}, name="block")))
    assert "conv2d padding ((0, 2), (0, 2)) in the candidate, (1, 1) in the reference" in texts, texts
