"""The diagnosis of ports that write out by hand an operation the reference calls fused: a layer
norm as mean, variance and square root, a GELU as its formula, a softmax as exp over sum. A
hand-written version that computes the reference's op is no finding; one that computes something
else is named by what differs (an unbiased variance, eps outside the square root, the tanh GELU, a
softmax over another dim), or said to differ from the reference's op re-run on the same input,
never as the substitution itself ("applies mean where the reference applies layer_norm")."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from harness.diagnose import diagnose_modules
from port_toys import randomized, tokens
from helpers import findings_text, merge_heads, split_heads


def _copied(candidate: nn.Module, reference: nn.Module) -> nn.Module:
    """``candidate`` in float64 and eval mode holding ``reference``'s tensors, in order."""
    candidate = candidate.double().eval()
    with torch.no_grad():
        for mine, theirs in zip(candidate.parameters(), reference.parameters(), strict=True):
            mine.copy_(theirs)
    return candidate


def _diagnosed(candidate: nn.Module, reference: nn.Module) -> list[dict]:
    """The findings on operations (the toys' own settings, the way each writes its op, differ by design)."""
    return [f for f in diagnose_modules(candidate, reference, (tokens(),), {}) if f["kind"] != "attribute"]


# -- layer norm --------------------------------------------------------------------------------
class Norm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.norm, self.head = nn.Linear(16, 16), nn.LayerNorm(16, eps=1e-6), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.fc(x)))


class HandNorm(nn.Module):
    """``Norm`` with its layer norm written out: ``variance`` ``"centred"`` (the mean of the squared
    deviations), ``"moments"`` (E[x^2] - m^2) or ``"unbiased"`` (``x.var``); eps added inside the square
    root or outside it; the input centred or not; ``scale`` applied after the norm."""

    def __init__(self, variance: str = "centred", eps: float = 1e-6, eps_inside: bool = True, centre: bool = True,
                 scale: float = 1.0) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.weight, self.bias = nn.Parameter(torch.ones(16)), nn.Parameter(torch.zeros(16))
        self.head = nn.Linear(16, 16)
        self.variance, self.eps, self.eps_inside, self.centre, self.scale = variance, eps, eps_inside, centre, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x)
        m = x.mean(-1, keepdim=True)
        if self.variance == "unbiased":
            v = x.var(-1, keepdim=True)
        elif self.variance == "moments":
            v = (x * x).mean(-1, keepdim=True) - m * m
        else:
            v = ((x - m) ** 2).mean(-1, keepdim=True)
        d = torch.sqrt(v + self.eps) if self.eps_inside else torch.sqrt(v) + self.eps
        y = ((x - m) if self.centre else x) / d * self.weight + self.bias
        if self.scale != 1.0:
            y = y * self.scale
        return self.head(y)


def _norms(**how) -> tuple[nn.Module, nn.Module]:
    reference = randomized(Norm(), 0)
    candidate = HandNorm(**how).double().eval()
    candidate.fc.load_state_dict(reference.fc.state_dict())
    candidate.head.load_state_dict(reference.head.state_dict())
    with torch.no_grad():
        candidate.weight.copy_(reference.norm.weight)
        candidate.bias.copy_(reference.norm.bias)
    return candidate, reference


@pytest.mark.parametrize("variance", ["centred", "moments"])
def test_a_hand_written_layer_norm_that_computes_it_is_no_finding(variance):
    findings = _diagnosed(*_norms(variance=variance))
    assert findings == [], findings_text(findings)


def test_an_unbiased_hand_written_layer_norm_is_named_as_such():
    findings = _diagnosed(*_norms(variance="unbiased"))
    assert [(f["op"], f["argument"], f["candidate"]) for f in findings] == [("layer_norm", "correction", 1)], \
        findings_text(findings)
    assert "hand-written layer_norm uses an unbiased variance (var correction=1)" in findings[0]["text"]


def test_eps_added_outside_the_square_root_is_named_as_such():
    findings = _diagnosed(*_norms(eps_inside=False))
    assert [(f["op"], f["argument"]) for f in findings] == [("layer_norm", "eps")], findings_text(findings)
    assert "hand-written layer_norm adds eps outside the square root" in findings[0]["text"]


def test_another_eps_under_the_square_root_is_named_with_both_values():
    findings = _diagnosed(*_norms(eps=1e-5))
    assert [(f["argument"], f["candidate"], f["reference"]) for f in findings] == [("eps", 1e-5, 1e-6)], \
        findings_text(findings)


def test_an_unknown_difference_says_the_hand_written_sequence_computes_something_else():
    findings = _diagnosed(*_norms(centre=False))
    assert len(findings) == 1 and findings[0]["text"].startswith(
        "<root>: the candidate's hand-written sequence (mean, sub, pow, mean, add, sqrt, div, mul, add) in place of "
        "layer_norm(normalized_shape=(16,), eps=1e-06) computes something else"), findings_text(findings)


def test_the_difference_is_the_reference_op_re_run_on_the_candidates_input():
    candidate, reference = _norms(centre=False)
    h = candidate.fc(tokens())
    v = ((h - h.mean(-1, keepdim=True)) ** 2).mean(-1, keepdim=True)
    written = h / torch.sqrt(v + 1e-6) * candidate.weight + candidate.bias
    expected = (written - reference.norm(h)).abs().max().item()
    text = _diagnosed(candidate, reference)[0]["text"]
    assert f"max_abs {expected:.3e} from the reference's layer_norm(normalized_shape=(16,), eps=1e-06) " \
           f"on the same input" in text, text


def test_a_faithful_hand_written_layer_norm_is_no_lead_for_an_error_after_it():
    candidate, reference = _norms(variance="moments")
    with torch.no_grad():
        candidate.head.weight[0, 1] += 0.1
    findings = _diagnosed(candidate, reference)
    assert [(f["kind"], f["op"]) for f in findings] == [("argument", "linear")], findings_text(findings)


def test_an_op_after_a_faithful_hand_written_layer_norm_is_named_extra():
    findings = _diagnosed(*_norms(scale=2.0))
    assert [(f["kind"], f["op"]) for f in findings] == [("extra_op", "mul")], findings_text(findings)


# -- GELU --------------------------------------------------------------------------------------
class Mlp(nn.Module):
    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.fc1, self.fc2, self.approximate = nn.Linear(16, 32), nn.Linear(32, 16), approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


class HandMlp(Mlp):
    """``Mlp`` with its GELU written as a formula: ``erf``, ``tanh`` or ``sigmoid`` (``x * sigmoid(1.702 x)``)."""

    def __init__(self, formula: str) -> None:
        super().__init__()
        self.formula = formula

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        gelu = {"erf": gelu_erf, "tanh": gelu_tanh, "sigmoid": lambda t: t * torch.sigmoid(1.702 * t)}[self.formula]
        return self.fc2(gelu(h))


def _mlps(formula: str, approximate: str) -> tuple[nn.Module, nn.Module]:
    reference = randomized(Mlp(approximate), 0)
    return _copied(HandMlp(formula), reference), reference


@pytest.mark.parametrize("formula, approximate", [("erf", "none"), ("tanh", "tanh")])
def test_a_gelu_formula_that_computes_the_references_gelu_is_no_finding(formula, approximate):
    findings = _diagnosed(*_mlps(formula, approximate))
    assert findings == [], findings_text(findings)


def test_a_tanh_formula_gelu_against_the_erf_gelu_is_named_the_tanh_approximation():
    findings = _diagnosed(*_mlps("tanh", "none"))
    assert [(f["op"], f["argument"], f["candidate"], f["reference"]) for f in findings] == [
        ("gelu", "approximate", "tanh", "none")], findings_text(findings)
    assert "hand-written gelu uses the tanh approximation where the reference applies the exact erf GELU" \
        in findings[0]["text"]


def test_an_erf_formula_gelu_against_the_tanh_gelu_is_named_the_exact_form():
    findings = _diagnosed(*_mlps("erf", "tanh"))
    assert [(f["argument"], f["candidate"], f["reference"]) for f in findings] == [("approximate", "none", "tanh")], \
        findings_text(findings)


def test_a_sigmoid_gelu_is_named_the_sigmoid_approximation():
    findings = _diagnosed(*_mlps("sigmoid", "none"))
    assert len(findings) == 1 and "uses the sigmoid approximation" in findings[0]["text"], findings_text(findings)


# -- softmax -----------------------------------------------------------------------------------
def softmax_written(s: torch.Tensor, dim: int, subtract_max: bool = True) -> torch.Tensor:
    e = (s - s.amax(dim, keepdim=True)).exp() if subtract_max else s.exp()
    return e / e.sum(dim, keepdim=True)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, 2) for t in self.qkv(x).chunk(3, -1))
        return self.proj(merge_heads(self.attend(q, k, v)))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


class HandAttention(Attention):
    """``Attention`` written out, its softmax as exp over sum over ``dim``."""

    def __init__(self, dim: int = -1, subtract_max: bool = True) -> None:
        super().__init__()
        self.dim, self.subtract_max = dim, subtract_max

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
        return softmax_written(scores, self.dim, self.subtract_max) @ v


def _attentions(**how) -> tuple[nn.Module, nn.Module]:
    reference = randomized(Attention(), 0)
    return _copied(HandAttention(**how), reference), reference


@pytest.mark.parametrize("subtract_max", [True, False])
def test_an_attention_with_its_softmax_written_out_is_no_finding(subtract_max):
    findings = _diagnosed(*_attentions(subtract_max=subtract_max))
    assert findings == [], findings_text(findings)


def test_a_written_out_softmax_over_the_queries_is_named_by_its_dim():
    findings = _diagnosed(*_attentions(dim=-2))
    assert [(f["op"], f["argument"], f["candidate"], f["reference"]) for f in findings] == [
        ("scaled_dot_product_attention", "dim", -2, -1)], findings_text(findings)
    assert "normalizes over dim -2 where the reference normalizes over the keys (dim -1)" in findings[0]["text"]


class Gate(nn.Module):
    """A softmax over the features between two linears; ``dim`` set: written out over ``dim``."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.fc1, self.fc2, self.dim = nn.Linear(16, 16), nn.Linear(16, 16), dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(F.softmax(h, dim=-1) if self.dim is None else softmax_written(h, self.dim))


def test_a_written_out_softmax_over_another_dim_than_the_references_names_both_dims():
    reference = randomized(Gate(), 0)
    findings = _diagnosed(_copied(Gate(dim=-2), reference), reference)
    assert [(f["op"], f["argument"], f["candidate"], f["reference"]) for f in findings] == [
        ("softmax", "dim", -2, -1)], findings_text(findings)
