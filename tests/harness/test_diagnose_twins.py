"""Twins explained through what they hold and run, not through values that happen to agree: split q/k/v
projections against a fused one whose input already carries an error from upstream, one tensor passed as
query, key and value, a position table looked up, a norm joined with its activation, an op missing under
another twin name, an argument given as its default's meaning, a block that drops its shift, operands
swapped against a written-out attention, a culprit with no twin at all."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import harness
from harness.diagnose import culprit_diagnosis, diagnose_modules
from helpers import findings_text, merge_heads, split_heads
from port_toys import FunctionalNormAct

DIM, HEADS, TOKENS = 8, 2, 5


class Split(nn.Module):
    """q, k and v projections of their own; a keyword flag the fused side does not take."""

    def __init__(self, scale: float | None = None) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(DIM, DIM) for _ in range(4))
        self.scale = scale

    def forward(self, x: torch.Tensor, output_attentions: bool = False) -> torch.Tensor:
        q, k, v = (split_heads(p(x), HEADS) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v, scale=self.scale)))


class Fused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, HEADS) for t in self.qkv(x).chunk(3, -1))
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class SplitBlock(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(DIM, eps=eps), Split()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.norm(x), output_attentions=False)


class FusedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(DIM), Fused()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.norm(x))


def _load_split(split: Split, fused: Fused) -> None:
    with torch.no_grad():
        for name, w, b in zip(("q_proj", "k_proj", "v_proj"), fused.qkv.weight.chunk(3), fused.qkv.bias.chunk(3)):
            getattr(split, name).weight.copy_(w)
            getattr(split, name).bias.copy_(b)
        split.out_proj.load_state_dict(fused.proj.state_dict())


def test_a_second_bug_is_explained_though_its_inputs_carry_the_first():
    torch.manual_seed(0)
    ref = nn.Sequential(FusedBlock(), FusedBlock()).double().eval()
    cand = nn.Sequential(SplitBlock(1e-5), SplitBlock(1e-5)).double().eval()
    for c, r in zip(cand, ref):
        c.norm.load_state_dict(r.norm.state_dict())
        _load_split(c.attn, r.attn)
    x = torch.randn(2, TOKENS, DIM, dtype=torch.float64)
    weights = harness.map_weights(cand, ref, x)
    cand[0].norm.eps, cand[1].attn.scale = 1e-3, 0.3
    findings = harness.compare(cand, ref, x, weights=weights).diagnosis
    second = [f for f in findings if f["module"].startswith("1.")]
    assert any("scale 0.3 in the candidate" in f["text"] for f in second), \
        f"the second block's changed scale is lost:\n{findings_text(findings)}"


def test_split_projections_pair_with_a_fused_one_through_their_weights_whatever_their_inputs():
    torch.manual_seed(0)
    ref, cand = Fused().double().eval(), Split(scale=0.3).double().eval()
    _load_split(cand, ref)
    x = torch.randn(2, TOKENS, DIM, dtype=torch.float64)
    upstream = x + 1e-3 * torch.randn_like(x)  # the candidate's own input, an error from upstream in it
    findings = diagnose_modules(cand, ref, (x,), {}, candidate_inputs=((upstream,), {}))
    assert not any(f["kind"] in ("extra_op", "missing_op") for f in findings), \
        f"the split projections are reported as ops the fused side lacks:\n{findings_text(findings)}"


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def test_one_tensor_passed_as_query_key_and_value_stays_one_in_the_rerun():
    torch.manual_seed(0)
    ref, cand = Fused().float().eval(), SelfAttention().float().eval()
    with torch.no_grad():
        cand.attn.in_proj_weight.copy_(ref.qkv.weight)
        cand.attn.in_proj_bias.copy_(ref.qkv.bias)
        cand.attn.out_proj.load_state_dict(ref.proj.state_dict())
        cand.attn.out_proj.weight[3, 1] += 0.01
    x = torch.randn(2, TOKENS, DIM)
    findings = diagnose_modules(cand.attn, ref, (x,), {}, candidate_inputs=((x, x, x), {"need_weights": False}))
    assert findings and "out_proj.weight holds other values" in findings[0]["text"], \
        f"the changed output projection is not named first:\n{findings_text(findings)}"


class TablePositions(nn.Module):
    """Position embeddings looked up in a table at position ids held as a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, DIM, 4, 4)
        self.position_embedding = nn.Embedding(TOKENS - 1, DIM)
        self.register_buffer("position_ids", torch.arange(TOKENS - 1)[None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch(x).flatten(2).transpose(1, 2) + self.position_embedding(self.position_ids)


class ParameterPositions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, DIM, 4, 4)
        self.pos_embed = nn.Parameter(torch.randn(1, TOKENS - 1, DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch(x).flatten(2).transpose(1, 2) + self.pos_embed


def test_a_changed_position_table_is_an_operand_holding_other_values():
    torch.manual_seed(0)
    ref, cand = ParameterPositions().double().eval(), TablePositions().double().eval()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    weights = harness.map_weights(cand, ref, x)
    weights.transfer(ref, cand)
    with torch.no_grad():
        cand.position_embedding.weight[1, 2] += 0.01
    findings = harness.compare(cand, ref, x, weights=weights).diagnosis
    text = findings[0]["text"] if findings else ""
    assert text.startswith("position_embedding") and "weight holds other values than the reference's pos_embed" \
        in text, f"the changed table is not named by its values:\n{findings_text(findings)}"


def _norm_act_pair(norm_act_candidate: bool) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    joined = nn.Sequential(nn.Conv2d(3, DIM, 3, bias=False), FunctionalNormAct(DIM), nn.Conv2d(DIM, DIM, 3, bias=False))
    split = nn.Sequential(nn.Conv2d(3, DIM, 3, bias=False), nn.BatchNorm2d(DIM), nn.ReLU(),
                          nn.Conv2d(DIM, DIM, 3, bias=False))
    with torch.no_grad():
        split[1].running_var.uniform_(0.5, 1.5)
        split[1].running_mean.uniform_(-0.5, 0.5)
    cand, ref = (joined, split) if norm_act_candidate else (split, joined)
    if not norm_act_candidate:
        harness.map_weights(joined, split, torch.randn(1, 3, 8, 8)).transfer(split, joined)
    return cand.double().eval(), ref.double().eval()


@pytest.mark.parametrize("norm_act_candidate", [False, True])
def test_a_norm_joined_with_its_activation_names_the_tensors_as_the_models_do(norm_act_candidate):
    cand, ref = _norm_act_pair(norm_act_candidate)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    weights = harness.map_weights(cand, ref, x)
    weights.transfer(ref, cand)
    with torch.no_grad():
        cand[1].running_var[2] += 0.1
    findings = harness.compare(cand, ref, x, weights=weights).diagnosis
    texts = findings_text(findings)
    assert "running_var" in texts and not any(part in texts for part in ("head", "tail")), \
        f"a tensor is named by a part name no model has:\n{texts}"


class Shortcut(nn.Module):
    """A residual block with a projection shortcut, its submodules named."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, DIM, 3, 2, 1, bias=False), nn.BatchNorm2d(DIM))
        self.downsample = nn.Sequential(nn.Conv2d(3, DIM, 1, 2, bias=False), nn.BatchNorm2d(DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.downsample(x))


class NumberedShortcut(nn.ModuleList):
    """The same block, its submodules numbered; ``keep`` False drops the shortcut."""

    keep = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self[0](x)
        return torch.relu(y + self[1](x) if self.keep else y)


def test_an_op_missing_in_a_twin_of_another_name_is_found_on_the_candidate_module():
    torch.manual_seed(0)
    ref = nn.Sequential(OrderedDict(block=Shortcut())).double().eval()
    cand = nn.Sequential(NumberedShortcut([nn.Sequential(nn.Conv2d(3, DIM, 3, 2, 1, bias=False), nn.BatchNorm2d(DIM)),
                                           nn.Sequential(nn.Conv2d(3, DIM, 1, 2, bias=False), nn.BatchNorm2d(DIM))]))
    cand = cand.double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    weights = harness.map_weights(cand, ref, x)
    weights.transfer(ref, cand)
    cand[0].keep = False
    findings = harness.compare(cand, ref, x, weights=weights).diagnosis
    modules = dict(cand.named_modules())
    assert findings and all(f["module"] in modules for f in findings), \
        f"a finding names a module the candidate does not have:\n{findings_text(findings)}"
    assert "the reference's block.downsample.0 applies it" in findings_text(findings), \
        f"the reference's module running the missing op is not named:\n{findings_text(findings)}"


class Resized(nn.Module):
    """A position table resized to the input's grid; the keyword arguments of the resize as given."""

    def __init__(self, **resize: object) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, DIM, 4, 4))
        self.resize = resize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.interpolate(self.pos, size=x.shape[-2:], mode="bicubic", **self.resize)


def test_an_argument_given_as_its_default_meaning_is_no_difference():
    torch.manual_seed(0)
    ref = Resized(antialias=True).double().eval()
    cand = Resized(align_corners=False, antialias=False).double().eval()
    cand.load_state_dict(ref.state_dict())
    findings = diagnose_modules(cand, ref, (torch.randn(1, DIM, 4, 6, dtype=torch.float64),), {})
    assert findings and findings[0]["argument"] == "antialias" and \
        not any(f["argument"] == "align_corners" for f in findings), \
        f"align_corners None reads as False, antialias is the difference:\n{findings_text(findings)}"


class WindowAttention(nn.Module):
    """Attention over windows of tokens, its mask passed in (None where the windows are not shifted)."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.inner = Fused() if fused else Split()

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._qkv(windows)
        return self._out(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if isinstance(self.inner, Fused):
            return tuple(split_heads(t, HEADS) for t in self.inner.qkv(x).chunk(3, -1))
        return tuple(split_heads(p(x), HEADS) for p in (self.inner.q_proj, self.inner.k_proj, self.inner.v_proj))

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.proj(x) if isinstance(self.inner, Fused) else self.inner.out_proj(x)


class ShiftedBlock(nn.Module):
    """Tokens rolled along the sequence, split into two windows, attended, rolled back."""

    def __init__(self, fused: bool, shift: int = 1) -> None:
        super().__init__()
        self.attn, self.shift = WindowAttention(fused), shift
        self.register_buffer("mask", torch.zeros(2, 1, 3, 3).index_fill_(-1, torch.tensor([2]), -1e4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.roll(x, -self.shift, 1) if self.shift else x
        windows = y.reshape(2, 3, DIM)
        y = (self.attn(windows, self.mask) if self.shift else self.attn(windows)).reshape(1, 6, DIM)
        return x + (torch.roll(y, self.shift, 1) if self.shift else y)


def test_a_block_that_drops_its_shift_names_the_missing_roll_not_its_projections():
    torch.manual_seed(0)
    ref, cand = ShiftedBlock(fused=True).double().eval(), ShiftedBlock(fused=False).double().eval()
    _load_split(cand.attn.inner, ref.attn.inner)
    x = torch.randn(1, 6, DIM, dtype=torch.float64)
    weights = harness.map_weights(cand, ref, x)
    cand.shift = 0
    findings = harness.compare(cand, ref, x, weights=weights).diagnosis
    assert findings and "roll" in findings[0]["text"] and not any(f["op"] == "linear" for f in findings), \
        f"the dropped shift is not what the diagnosis names:\n{findings_text(findings)}"


class Explicit(Fused):
    """``softmax(q * scale @ k^T) @ v`` written out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, HEADS) for t in self.qkv(x).chunk(3, -1))
        scores = (q * (DIM // HEADS) ** -0.5) @ k.transpose(-2, -1)
        return self.proj(merge_heads(scores.softmax(-1) @ v))


class SwappedFused(Fused):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, HEADS) for t in self.qkv(x).chunk(3, -1))
        return self.proj(merge_heads(F.scaled_dot_product_attention(k, q, v)))


def test_query_and_key_swapped_against_a_written_out_attention_are_operands_in_another_order():
    torch.manual_seed(0)
    ref, cand = Explicit().double().eval(), SwappedFused().double().eval()
    cand.load_state_dict(ref.state_dict())
    findings = diagnose_modules(cand, ref, (torch.randn(2, TOKENS, DIM, dtype=torch.float64),), {})
    assert findings and "operand query holds the reference's key" in findings[0]["text"], \
        f"the swapped operands are not named:\n{findings_text(findings)}"


class Tokens(nn.Module):
    """Patches and a token prepended, in a module of its own that the reference does not have."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, DIM, 4, 4)
        self.token = nn.Parameter(torch.randn(1, 1, DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch(x).flatten(2).transpose(1, 2)
        return torch.cat([self.token.expand(len(x), -1, -1), patches], 1)


class WithTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embeddings, self.norm = Tokens(), nn.LayerNorm(DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.embeddings(x))


class TokenAtRoot(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch, self.norm = nn.Conv2d(3, DIM, 4, 4), nn.LayerNorm(DIM)
        self.cls_token = nn.Parameter(torch.randn(1, 1, DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch(x).flatten(2).transpose(1, 2)
        return self.norm(torch.cat([self.cls_token.expand(len(x), -1, -1), patches], 1))


def test_a_culprit_without_any_twin_names_the_tensor_it_holds_otherwise():
    torch.manual_seed(0)
    ref, cand = TokenAtRoot().double().eval(), WithTokens().double().eval()
    weights = harness.map_weights(cand, ref, torch.randn(1, 3, 8, 8, dtype=torch.float64))
    weights.transfer(ref, cand)
    with torch.no_grad():
        cand.embeddings.token[0, 0, 3] += 0.01
    findings = culprit_diagnosis([], "embeddings", root=ref, weights=weights, candidate=cand)
    assert findings and "token holds other values than the reference's cls_token" in findings[0]["text"], \
        f"the changed token is not named:\n{findings_text(findings)}"


class _Merge(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


class _Residual(nn.Module):
    """A residual block adding its shortcut in a ``merge`` child, or (``merge`` False) in its own
    code; ``keep`` False drops the add."""

    def __init__(self, merge: bool, keep: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(DIM, DIM, 3, padding=1), nn.BatchNorm2d(DIM))
        self.merge = _Merge() if merge else None
        self.keep = keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if not self.keep:
            return torch.relu(y)
        return torch.relu(self.merge(x, y) if self.merge is not None else x + y)


def test_an_op_missing_in_a_submodule_the_candidate_lacks_is_found_on_the_candidate_module():
    torch.manual_seed(0)
    # the reference adds in a child the candidate does not have: the add missing in the candidate's
    # block is no finding on the reference's child name
    ref = nn.Sequential(OrderedDict(block=_Residual(merge=True))).double().eval()
    cand = nn.Sequential(OrderedDict(block=_Residual(merge=False, keep=False))).double().eval()
    x = torch.randn(2, DIM, 8, 8, dtype=torch.float64)
    weights = harness.map_weights(cand, ref, x)
    weights.transfer(ref, cand)
    findings = harness.compare(cand, ref, x, weights=weights).diagnosis
    modules = {name or "<root>" for name, _ in cand.named_modules()}
    assert findings and all(f["module"] in modules for f in findings), \
        f"a finding names a module the candidate does not have:\n{findings_text(findings)}"
