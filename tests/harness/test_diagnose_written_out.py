"""The diagnosis of ports that write a layer out in plain arithmetic, as JAX or TF code does: a bias
added after the residual sum, a token-mixing einsum, a batch norm as ``(x - mean) * rsqrt(var + eps)``,
a patch embedding as unfold and a product. Each computes what the reference's module does, so it is
read as that module and only the real error is named; a port in one module says where its op is."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from harness.diagnose import diagnose_modules
from port_toys import feature_maps, images, randomized, tokens
from helpers import findings_text


def _ops(findings: list[dict]) -> list[dict]:
    return [f for f in findings if f["kind"] != "attribute"]


def _copy(pairs) -> None:
    """Each candidate tensor given its reference's values (transposed where the shapes say so)."""
    with torch.no_grad():
        for mine, theirs in pairs:
            mine.copy_(theirs if mine.shape == theirs.shape else theirs.t())


# -- a bias added after the residual sum -------------------------------------------------------
class ResidualMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.fc1(x)
        return x + self.fc2(F.gelu(x))


class ResidualMlpPort(nn.Module):
    """``t + h @ W + b``: Python adds the bias to the residual sum, ``(t + h @ W) + b``."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Parameter(torch.zeros(16, 16)), nn.Parameter(torch.zeros(16, 16))
        self.b1, self.b2 = nn.Parameter(torch.zeros(16)), nn.Parameter(torch.zeros(16))
        self.approximate = "none"

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t + t @ self.w1 + self.b1
        return t + F.gelu(t, approximate=self.approximate) @ self.w2 + self.b2


@pytest.fixture
def residual_pair():
    reference, candidate = randomized(ResidualMlp(), 2), randomized(ResidualMlpPort(), 1)
    _copy([(candidate.w1, reference.fc1.weight.t()), (candidate.b1, reference.fc1.bias),
           (candidate.w2, reference.fc2.weight.t()), (candidate.b2, reference.fc2.bias)])  # stored (in, out)
    return candidate, reference


def test_a_bias_added_after_the_residual_sum_is_the_linear_layers_bias(residual_pair):
    candidate, reference = residual_pair
    candidate.approximate = "tanh"
    findings = _ops(diagnose_modules(candidate, reference, (tokens(),), {}))
    assert [(f["op"], f["argument"]) for f in findings] == [("gelu", "approximate")], findings_text(findings)


def test_a_weight_before_a_bias_added_after_the_residual_sum_is_named(residual_pair):
    candidate, reference = residual_pair
    with torch.no_grad():
        candidate.w2[1, 2] += 0.05
    findings = _ops(diagnose_modules(candidate, reference, (tokens(),), {}))
    assert len(findings) == 1 and findings[0]["text"].startswith(
        "<root>: linear operand w2 holds other values than the reference's fc2.weight"), findings_text(findings)


# -- token mixing as an einsum over the token axis ---------------------------------------------
class TokenMlp(nn.Module):
    """An MLP over the ``n`` tokens of ``(B, n, C)`` between two layer norms, as MLP-Mixer writes it."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(16, eps=1e-6), nn.Linear(n, 8), nn.Linear(8, n)
        self.norm_out = nn.LayerNorm(16, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x).transpose(1, 2)
        return self.norm_out(x + self.fc2(F.gelu(self.fc1(y))).transpose(1, 2))


class TokenMlpEinsum(nn.Module):
    """The same with einsums over the token axis, each bias broadcast on the axis it writes."""

    def __init__(self, n: int, equations: tuple[str, str], approximate: str = "none", eps_out: float = 1e-6) -> None:
        super().__init__()
        self.equations, self.approximate, self.eps_out = equations, approximate, eps_out
        sizes = {"n": n, "h": 8}  # tokens, hidden features
        self.w1, self.w2 = (nn.Parameter(torch.zeros([sizes[s] for s in eq.split(",")[1].split("->")[0]]))
                            for eq in equations)
        self.b1, self.b2 = nn.Parameter(torch.zeros(8)), nn.Parameter(torch.zeros(n))
        self.scale, self.shift, self.scale_out, self.shift_out = (nn.Parameter(torch.zeros(16)) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, (16,), self.scale, self.shift, 1e-6)
        h = F.gelu(torch.einsum(self.equations[0], y, self.w1) + self.b1[None, :, None], approximate=self.approximate)
        x = x + (torch.einsum(self.equations[1], h, self.w2) + self.b2[None, :, None])
        return F.layer_norm(x, (16,), self.scale_out, self.shift_out, self.eps_out)


_TOKEN_MIXING = ("bnc,nh->bhc", "bhc,hn->bnc")


def _token_pair(n: int, equations: tuple[str, str] = _TOKEN_MIXING, **bug):
    reference, candidate = randomized(TokenMlp(n), 2), randomized(TokenMlpEinsum(n, equations, **bug), 1)
    _copy([(candidate.w1, reference.fc1.weight), (candidate.b1, reference.fc1.bias),
           (candidate.w2, reference.fc2.weight), (candidate.b2, reference.fc2.bias),
           (candidate.scale, reference.norm.weight), (candidate.shift, reference.norm.bias),
           (candidate.scale_out, reference.norm_out.weight),
           (candidate.shift_out, reference.norm_out.bias)])
    return candidate, reference


@pytest.mark.parametrize("equations", [_TOKEN_MIXING, ("bnc,hn->bhc", "bhc,nh->bnc")])
def test_a_token_mixing_einsum_plus_a_bias_on_the_token_axis_is_a_linear(equations):
    candidate, reference = _token_pair(5, equations, approximate="tanh")
    findings = _ops(diagnose_modules(candidate, reference, (tokens(),), {}))
    assert [(f["op"], f["argument"]) for f in findings] == [("gelu", "approximate")], findings_text(findings)


def test_a_token_mixing_einsum_over_as_many_tokens_as_channels_agrees_in_the_transposed_layout():
    candidate, reference = _token_pair(16, eps_out=1e-5)  # its outputs (B, N, C) against (B, C, N): one shape
    x = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    findings = _ops(diagnose_modules(candidate, reference, (x,), {}))
    assert [(f["op"], f["argument"]) for f in findings] == [("layer_norm", "eps")], findings_text(findings)


# -- a batch norm written as arithmetic ---------------------------------------------------------
class ArithmeticBatchNorm(nn.Module):
    """Batch norm in eval mode as JAX/TF ports write it, in one of three spellings; any other
    ``spelling`` divides by the variance itself, not its square root."""

    def __init__(self, spelling: str = "rsqrt", eps: float = 1e-5) -> None:
        super().__init__()
        self.spelling, self.eps = spelling, eps
        self.scale, self.bias = nn.Parameter(torch.ones(8)), nn.Parameter(torch.zeros(8))
        self.register_buffer("mean", torch.zeros(8))
        self.register_buffer("var", torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = (lambda t: t[:, None, None])
        if self.spelling == "rsqrt":
            return (x - c(self.mean)) * torch.rsqrt(c(self.var) + self.eps) * c(self.scale) + c(self.bias)
        if self.spelling == "scale_first":  # Flax: the scale multiplied into the inverse first
            return (x - c(self.mean)) * (torch.rsqrt(c(self.var) + self.eps) * c(self.scale)) + c(self.bias)
        if self.spelling == "sqrt":
            return (x - c(self.mean)) / torch.sqrt(c(self.var) + self.eps) * c(self.scale) + c(self.bias)
        return (x - c(self.mean)) / (c(self.var) + self.eps) * c(self.scale) + c(self.bias)  # no square root


def _batch_norm_pair(spelling: str, eps: float = 1e-5):
    reference, candidate = randomized(nn.BatchNorm2d(8), 2), randomized(ArithmeticBatchNorm(spelling, eps), 1)
    _copy([(candidate.scale, reference.weight), (candidate.bias, reference.bias),
           (candidate.mean, reference.running_mean), (candidate.var, reference.running_var)])
    return candidate, reference


@pytest.mark.parametrize("spelling", ["rsqrt", "scale_first", "sqrt"])
def test_a_batch_norm_written_as_arithmetic_names_the_constant_added_to_the_variance_as_its_eps(spelling):
    candidate, reference = _batch_norm_pair(spelling, eps=1e-3)
    findings = _ops(diagnose_modules(candidate, reference, (feature_maps(),), {}, name="bn"))
    assert [f["text"] for f in findings] == ["bn: batch_norm eps 0.001 in the candidate, 1e-05 in the reference"], \
        findings_text(findings)


def test_a_batch_norm_written_as_arithmetic_names_a_mean_holding_other_values():
    candidate, reference = _batch_norm_pair("rsqrt")
    candidate.mean[2] += 0.1
    findings = _ops(diagnose_modules(candidate, reference, (feature_maps(),), {}, name="bn"))
    assert len(findings) == 1 and findings[0]["text"].startswith(
        "bn: batch_norm operand mean holds other values than the reference's running_mean"), findings_text(findings)


def test_a_batch_norm_written_as_arithmetic_that_divides_by_the_variance_says_so():
    candidate, reference = _batch_norm_pair("no_sqrt")
    findings = _ops(diagnose_modules(candidate, reference, (feature_maps(),), {}, name="bn"))
    assert [f["text"] for f in findings] == [
        "bn: batch_norm divides_by 'var + eps' in the candidate, 'sqrt(var + eps)' in the reference"], findings_text(findings)


# -- a patch embedding written as unfold and a product ------------------------------------------
class ConvPatchEmbed(nn.Module):
    def __init__(self, cls: bool) -> None:
        super().__init__()
        self.proj, self.cls = nn.Conv2d(3, 16, 3, stride=3), cls
        self.cls_token, self.pos_embed = nn.Parameter(torch.zeros(1, 1, 16)), nn.Parameter(torch.zeros(1, 5, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1) + self.pos_embed if self.cls else t


class UnfoldPatchEmbed(nn.Module):
    """Patches by ``F.unfold``, projected by a ``(in, out)`` matrix; a class token prepended."""

    def __init__(self, cls: bool) -> None:
        super().__init__()
        self.w, self.b, self.with_cls = nn.Parameter(torch.zeros(27, 16)), nn.Parameter(torch.zeros(16)), cls
        self.cls, self.pos = nn.Parameter(torch.zeros(1, 1, 16)), nn.Parameter(torch.zeros(1, 5, 16))
        self.pos_first = False  # the position embedding added to the patches before the class token is prepended

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = F.unfold(x, 3, stride=3).transpose(1, 2) @ self.w + self.b
        if self.pos_first:
            return torch.cat([self.cls.expand(t.shape[0], -1, -1), t + self.pos[:, 1:]], 1)
        return torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos if self.with_cls else t


def _patch_pair(cls: bool):
    reference, candidate = randomized(ConvPatchEmbed(cls), 2), randomized(UnfoldPatchEmbed(cls), 1)
    _copy([(candidate.w, reference.proj.weight.reshape(16, 27)), (candidate.b, reference.proj.bias),
           (candidate.cls, reference.cls_token), (candidate.pos, reference.pos_embed)])
    return candidate, reference


def test_a_patch_embedding_written_as_unfold_and_a_product_is_a_convolution_whose_weight_is_named():
    candidate, reference = _patch_pair(cls=False)
    with torch.no_grad():
        candidate.w[5, 3] += 0.05
    findings = _ops(diagnose_modules(candidate, reference, (images(),), {}))
    assert len(findings) == 1 and findings[0]["text"].startswith(
        "<root>: conv2d operand w holds other values than the reference's proj.weight"), findings_text(findings)


def test_the_tokens_of_an_unfold_patch_embedding_need_no_flattening_of_a_map_to_be_compared():
    candidate, reference = _patch_pair(cls=True)
    candidate.pos_first = True  # the reference's flatten and transpose of its map are no difference: the add
    findings = _ops(diagnose_modules(candidate, reference, (images(),), {}))  # of a part of the table is
    assert [f["text"] for f in findings] == [
        "<root>: add receives pos[:, 1:5] only (64 of its 80 values), where the reference passes all of pos_embed: "
        "pos[:, 0:1] never reaches this add"], findings_text(findings)


def test_a_class_token_concatenated_with_the_patches_is_no_operand_of_the_add_after():
    candidate, reference = _patch_pair(cls=True)
    with torch.no_grad():
        candidate.pos[0, 2, 3] += 0.05
    findings = _ops(diagnose_modules(candidate, reference, (images(),), {}))
    assert len(findings) == 1 and findings[0]["text"].startswith(
        "<root>: add operand pos holds other values than the reference's pos_embed"), findings_text(findings)


# -- where an op of a port in one module sits ---------------------------------------------------
class TwoNorms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.fc, self.norm2 = nn.LayerNorm(16, eps=1e-6), nn.Linear(16, 16), nn.LayerNorm(16, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.fc(self.norm1(x)))


class TwoNormsFunctional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1_w, self.ln1_b, self.ln2_w, self.ln2_b = (nn.Parameter(torch.zeros(16)) for _ in range(4))
        self.w, self.b = nn.Parameter(torch.zeros(16, 16)), nn.Parameter(torch.zeros(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, (16,), self.ln1_w, self.ln1_b, 1e-6)
        return F.layer_norm(F.linear(x, self.w, self.b), (16,), self.ln2_w, self.ln2_b, 1e-5)


@pytest.fixture
def two_norms_findings():
    reference, candidate = randomized(TwoNorms(), 2), randomized(TwoNormsFunctional(), 1)
    _copy([(candidate.ln1_w, reference.norm1.weight), (candidate.ln1_b, reference.norm1.bias),
           (candidate.w, reference.fc.weight), (candidate.b, reference.fc.bias),
           (candidate.ln2_w, reference.norm2.weight), (candidate.ln2_b, reference.norm2.bias)])
    return _ops(diagnose_modules(candidate, reference, (tokens(),), {}))


def test_a_finding_on_an_op_of_a_port_in_one_module_names_the_reference_module_running_its_twin(two_norms_findings):
    assert len(two_norms_findings) == 1 and "its twin is the reference's norm2" in two_norms_findings[0]["text"], \
        findings_text(two_norms_findings)


def test_a_finding_on_an_op_of_a_port_in_one_module_says_which_call_of_that_op_it_is(two_norms_findings):
    assert len(two_norms_findings) == 1 and "layer_norm call 2 of 2" in two_norms_findings[0]["text"], \
        findings_text(two_norms_findings)
