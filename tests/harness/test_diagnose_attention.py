"""Attention spelled differently on the two sides: a fused ``nn.MultiheadAttention`` against written-out
projections, a bias passed in against a bias table held inside, a written-out softmax with several
masks against one fused call. The diagnosis names what differs, never a spelling as a missing op;
the culprit is the attention, not a projection whose output the reference computes unnamed."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import harness
from harness.diagnose import diagnose_modules
from helpers import findings_text, merge_heads, split_heads

DIM, HEADS, TOKENS = 8, 2, 5


class Projections(nn.Module):
    """q, k and v projections of their own, one fused attention, an output projection."""

    def __init__(self, scale: float | None = None) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(DIM, DIM) for _ in range(4))
        self.scale = scale

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(split_heads(p(x), HEADS) for p in (self.q_proj, self.k_proj, self.v_proj))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(x)
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)))


class TorchMultihead(nn.Module):
    def __init__(self, need_weights: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=self.need_weights)[0]


def _multihead_pair(need_weights: bool) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    cand, ref = TorchMultihead(need_weights).double().eval(), Projections().double().eval()
    with torch.no_grad():
        for part, proj in zip(cand.attn.in_proj_weight.chunk(3), (ref.q_proj, ref.k_proj, ref.v_proj)):
            part.copy_(proj.weight)
        for part, proj in zip(cand.attn.in_proj_bias.chunk(3), (ref.q_proj, ref.k_proj, ref.v_proj)):
            part.copy_(proj.bias)
        cand.attn.out_proj.load_state_dict(ref.out_proj.state_dict())
    return cand, ref


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_weight_change_names_the_in_projection(need_weights):
    cand, ref = _multihead_pair(need_weights)
    x = torch.randn(2, TOKENS, DIM, dtype=torch.float64)
    assert diagnose_modules(cand, ref, (x,), {}) == [], "the faithful copy must agree"
    with torch.no_grad():
        cand.attn.in_proj_weight[DIM + 3, 1] *= 1.01  # a key projection weight
    findings = diagnose_modules(cand, ref, (x,), {})
    assert findings and "in_proj_weight holds other values than the reference's q_proj.weight+k_proj.weight" \
        in findings[0]["text"], f"the changed projection weight is not named first:\n{findings_text(findings)}"
    assert not any(f["kind"] == "missing_op" for f in findings), \
        f"ops reported missing, where one fused call computes them:\n{findings_text(findings)}"


class TableBias(nn.Module):
    """The reference: the bias table is its own parameter, read inside the attention."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = Projections()
        self.table = nn.Parameter(torch.randn(1, HEADS, TOKENS, TOKENS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.attn.qkv(x)
        return self.attn.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=self.table)))


def test_bias_passed_in_is_compared_by_value_with_a_bias_table_held_inside():
    torch.manual_seed(0)
    ref = TableBias().double().eval()
    cand = Projections().double().eval()
    cand.load_state_dict(ref.attn.state_dict())
    x = torch.randn(2, TOKENS, DIM, dtype=torch.float64)
    bias = ref.table.detach().clone()
    bias[0, 1, 2, 3] += 0.01
    findings = diagnose_modules(cand, ref, (x,), {}, candidate_inputs=((x, bias), {}))
    assert findings and findings[0]["argument"] == "attn_mask" and "holds other values" in findings[0]["text"], \
        f"the changed bias is not named by its values:\n{findings_text(findings)}"
    assert not any("missing" in f["text"] for f in findings), \
        f"a bias passed in is reported missing:\n{findings_text(findings)}"


class WrittenOut(TableBias):
    """softmax(q k^T * scale + bias + window mask) v, the two masks added one after the other."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.attn.qkv(x)
        scores = (q * (DIM // HEADS) ** -0.5) @ k.transpose(-2, -1)
        scores = scores + self.table
        scores = scores + mask
        return self.attn.out_proj(merge_heads(scores.softmax(-1) @ v))


def test_written_out_attention_with_two_masks_reads_as_one_fused_call():
    torch.manual_seed(0)
    ref = WrittenOut().double().eval()
    cand = Projections(scale=0.3).double().eval()
    cand.load_state_dict(ref.attn.state_dict())
    x = torch.randn(2, TOKENS, DIM, dtype=torch.float64)
    mask = torch.zeros(TOKENS, TOKENS, dtype=torch.float64).masked_fill(torch.rand(TOKENS, TOKENS) < 0.3, -math.inf)
    mask.fill_diagonal_(0.0)
    combined = ref.table.detach() + mask
    findings = diagnose_modules(cand, ref, (x, mask), {}, candidate_inputs=((x, combined), {}))
    assert [(f["argument"], f["candidate"]) for f in findings] == [("scale", 0.3)], \
        f"the changed scale should be the only finding:\n{findings_text(findings)}"


class SplitBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(DIM)
        self.attn = Projections(scale=(DIM // HEADS) ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


class FusedAttention(nn.Module):
    """One qkv weight read with F.linear: the q, k and v values are never a module's output."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out_proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, HEADS) for t in F.linear(x, self.qkv.weight, self.qkv.bias).chunk(3, -1))
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class FusedBlock(SplitBlock):
    def __init__(self) -> None:
        super().__init__()
        self.attn = FusedAttention()


def test_attention_scale_change_blames_the_attention_not_its_projection():
    torch.manual_seed(0)
    cand, ref = SplitBlock().double().eval(), FusedBlock().double().eval()
    with torch.no_grad():
        cand.norm.load_state_dict(ref.norm.state_dict())
        cand.attn.out_proj.load_state_dict(ref.attn.out_proj.state_dict())
        for i, proj in enumerate((cand.attn.q_proj, cand.attn.k_proj, cand.attn.v_proj)):
            proj.weight.copy_(ref.attn.qkv.weight.chunk(3)[i])
            proj.bias.copy_(ref.attn.qkv.bias.chunk(3)[i])
    x = torch.randn(2, TOKENS, DIM, dtype=torch.float64)
    assert harness.compare(cand, ref, x).passed, "the faithful copy must pass"
    cand.attn.scale = 0.3
    report = harness.compare(cand, ref, x)
    assert report.culprit == "attn", (f"blamed {report.culprit}, whose output the reference computes too; "
                                      f"the scale changed in attn")
