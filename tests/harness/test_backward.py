"""Backward parity on toy models: backward-only bugs (the forward stays bitwise equal) are found and
blamed on the module that makes them; the comparison leaves both models as they were."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import harness
from backward_toys import GeluWrongBackward
from harness.cli import main


class Block(nn.Module):
    """Pre-norm MLP block with a layer scale; switches inject backward-only bugs."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * dim, dim)
        self.ls = LayerScale(dim)
        self.detach_residual = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.ls(self.fc2(self.act(self.fc1(self.norm(x)))))
        return (x.detach() if self.detach_residual else x) + branch


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, dim))
        self.through_data = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.through_data:  # same values, written where autograd does not look
            out = x.clone()
            out.data.mul_(self.gamma.data)
            return out
        return x * self.gamma


class Net(nn.Module):
    def __init__(self, dim: int = 8, depth: int = 3) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Block(dim) for _ in range(depth)])
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x).mean(1))


class FusedAttention(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)  # a key bias gets a pure-rounding gradient
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(_attend(q, k, v, self.heads))


class SplitAttention(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(_attend(self.query(x), self.key(x), self.value(x), self.heads))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = q.shape
    q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    weights = (q @ k.transpose(-2, -1) / (d // heads) ** 0.5).softmax(-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, d)


@pytest.fixture
def twins() -> tuple[Net, Net, torch.Tensor]:
    torch.manual_seed(0)
    reference = Net().double().eval()
    return copy.deepcopy(reference), reference, torch.randn(2, 5, 8, dtype=torch.float64)


def _forward_equal(candidate: nn.Module, reference: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(candidate(x), reference(x))


def test_identical_models_have_identical_gradients(twins):
    candidate, reference, x = twins
    report = harness.compare(candidate, reference, x, backward=True)
    assert report.passed and report.backward.passed, "\n".join(report.backward.lines())
    nonzero = [p.candidate for p in report.backward.parameters if p.metrics.max_abs != 0]
    assert not nonzero, f"identical models got different gradients for {nonzero}"
    assert len(report.backward.parameters) == len(list(candidate.parameters()))


def test_without_backward_the_report_has_no_backward_section(twins):
    report = harness.compare(*twins)
    assert report.backward is None
    assert "backward" not in report.to_dict()


def test_detach_on_residual_blames_the_block(twins):
    candidate, reference, x = twins
    candidate.blocks[1].detach_residual = True
    assert _forward_equal(candidate, reference, x), "the injected bug must leave the forward bitwise equal"
    report = harness.compare(candidate, reference, x, backward=True)
    assert report.culprit is None and not report.passed
    assert report.backward.culprit == "blocks.1", report.format()
    assert report.backward.first_divergence == "blocks.1"


def test_a_layer_scale_written_through_data_names_the_parameter_cut_off_from_the_loss(twins):
    candidate, reference, x = twins
    candidate.blocks[2].ls.through_data = True
    report = harness.compare(candidate, reference, x, backward=True)
    assert any("receive no gradient at all where their reference sources do" in n and "blocks.2.ls.gamma" in n
               for n in report.backward.notes), "\n".join(report.backward.lines())


def test_a_backward_only_failure_says_the_forward_agrees(twins):
    candidate, reference, x = twins
    candidate.blocks[1].detach_residual = True
    lines = harness.compare(candidate, reference, x, backward=True).verdict().splitlines()
    assert lines[1] == ("forward: every aligned call and output agrees; the backward does not (backward culprit: "
                        "blocks.1, below)"), "\n".join(lines)


def test_custom_function_with_scaled_backward_blames_the_activation(twins):
    candidate, reference, x = twins
    candidate.blocks[2].act = GeluWrongBackward().eval()
    assert _forward_equal(candidate, reference, x)
    report = harness.compare(candidate, reference, x, backward=True)
    assert not report.backward.passed
    assert report.backward.culprit == "blocks.2.act", report.format()


def test_inplace_write_through_data_blames_the_layer_scale(twins):
    candidate, reference, x = twins
    candidate.blocks[0].ls.through_data = True
    assert _forward_equal(candidate, reference, x)
    report = harness.compare(candidate, reference, x, backward=True)
    assert report.backward.culprit == "blocks.0.ls", report.format()
    wrong = {p.candidate for p in report.backward.parameters if not p.passed}
    assert "blocks.0.ls.gamma" in wrong, f"gamma gets no gradient through .data, yet only {wrong} were flagged"


def test_modules_upstream_of_the_culprit_are_propagated(twins):
    candidate, reference, x = twins
    candidate.blocks[2].act = GeluWrongBackward().eval()
    report = harness.compare(candidate, reference, x, backward=True)
    statuses = {r.key: r.status for r in report.backward.rows}
    assert statuses["blocks.1#0"] == "propagated", statuses
    assert statuses["blocks.2#0"] == "contains", statuses


def test_rows_are_in_backward_order(twins):
    report = harness.compare(*twins, backward=True)
    order = [r.candidate for r in report.backward.rows]
    assert order.index("head") < order.index("blocks.2") < order.index("blocks.0"), order
    assert order.index("blocks.2.norm") < order.index("blocks.2"), "inner calls finish their backward first"


@pytest.fixture
def fused_and_split():
    """(fused-qkv candidate, split-projection reference, inputs, weight map), the weights transferred."""
    torch.manual_seed(0)
    candidate, reference = FusedAttention().double(), SplitAttention().double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    return candidate, reference, x, weights


def test_fused_qkv_gradients_compare_with_split_projections_through_the_map(fused_and_split):
    candidate, reference, x, weights = fused_and_split
    report = harness.compare(candidate, reference, x, weights=weights, backward=True)
    assert report.backward.passed, report.format()
    qkv = next(p for p in report.backward.parameters if p.candidate == "qkv.weight")
    assert qkv.reference == ("query.weight", "key.weight", "value.weight")
    assert qkv.metrics.rel_l2 <= 1e-12, f"fused qkv gradient differs from the split ones by {qkv.metrics.rel_l2:.3g}"


def test_a_comparison_leaves_gradients_and_flags_as_they_were(twins):
    candidate, reference, x = twins
    existing = torch.full_like(reference.head.weight, 7.0)
    reference.head.weight.grad = existing.clone()
    candidate.blocks[0].norm.weight.requires_grad_(False)
    harness.compare(candidate, reference, x, backward=True)
    assert torch.equal(reference.head.weight.grad, existing), "a .grad that was there must stay as it was"
    assert all(p.grad is None for p in candidate.parameters()), "no .grad may appear on the candidate"
    assert not candidate.blocks[0].norm.weight.requires_grad, "a frozen parameter must stay frozen"


def test_a_frozen_parameter_still_gets_its_gradient_compared(twins):
    candidate, reference, x = twins
    candidate.blocks[0].ls.through_data = True
    for model in (candidate, reference):
        model.blocks[0].ls.gamma.requires_grad_(False)
    report = harness.compare(candidate, reference, x, backward=True)
    assert "blocks.0.ls.gamma" in {p.candidate for p in report.backward.parameters if not p.passed}


def test_loss_per_side_that_reduces_differently_fails_the_loss(twins):
    candidate, reference, x = twins
    report = harness.compare(candidate, reference, x, backward=True,
                             backward_loss=(lambda out: out.mean(), lambda out: out.sum()))
    assert not report.backward.loss["passed"] and not report.passed
    assert any("loss values differ" in n for n in report.backward.notes)


def test_one_loss_for_both_sides_passes_on_identical_models(twins):
    report = harness.compare(*twins, backward=True, backward_loss=lambda out: out.square().mean())
    assert report.backward.passed and report.backward.loss["kind"] == "given"


@pytest.mark.parametrize("loss, error, text", [
    ("sum", TypeError, "backward_loss must be a function"),
    ((len,), TypeError, "backward_loss must be a function"),
])
def test_malformed_loss_is_refused(twins, loss, error, text):
    with pytest.raises(error, match=text):
        harness.compare(*twins, backward=True, backward_loss=loss)


def test_non_scalar_loss_is_refused(twins):
    with pytest.raises(ValueError, match="must return a scalar tensor"):
        harness.compare(*twins, backward=True, backward_loss=lambda out: out)


def test_loss_without_backward_is_refused(twins):
    with pytest.raises(ValueError, match="without backward=True"):
        harness.compare(*twins, backward_loss=lambda out: out.sum())


def test_json_backward_section_has_the_forward_shape(twins):
    candidate, reference, x = twins
    candidate.blocks[1].detach_residual = True
    result = json.loads(json.dumps(harness.compare(candidate, reference, x, backward=True).to_dict(), allow_nan=False))
    section = result["backward"]
    assert result["passed"] is False and section["passed"] is False
    assert section["culprit"] == "blocks.1" and section["first_divergence"] == "blocks.1"
    assert {"candidate", "reference", "call", "max_abs", "rel_l2", "passed", "status"} <= set(section["layers"][0])
    assert {"candidate", "reference", "transform", "max_abs", "rel_l2", "passed"} <= set(section["parameters"][0])


def test_terminal_report_names_the_backward_culprit(twins):
    candidate, reference, x = twins
    candidate.blocks[1].detach_residual = True
    text = harness.compare(candidate, reference, x, backward=True).format()
    assert "backward: FAIL" in text and "backward culprit" in text and "blocks.1" in text


def test_cli_compare_backward_writes_the_backward_section(tmp_path, capsys):
    path = tmp_path / "report.json"
    code = main(["compare", "dinov3_projector", "--dtype", "float64", "--backward", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "backward: PASS" in out
    result = json.loads(path.read_text())["results"][0]
    assert result["backward"]["passed"] is True and result["backward"]["parameters"]


def test_cli_backward_with_a_recorded_reference_is_a_usage_error(tmp_path, capsys):
    code = main(["compare", "dinov3_projector", "--backward", "--reference-trace", str(tmp_path / "t.pt")])
    assert code == 2
    assert "cannot run backward" in capsys.readouterr().err


def test_summary_mode_still_localizes_the_backward(twins):
    candidate, reference, x = twins
    candidate.blocks[2].act = GeluWrongBackward().eval()
    report = harness.compare(candidate, reference, x, backward=True, mode="summary")
    assert report.backward.culprit == "blocks.2.act", report.format()


def test_one_adamw_step_keeps_fused_and_split_weights_corresponding(fused_and_split):
    candidate, reference, x, weights = fused_and_split
    for model in (candidate, reference):
        model(x).square().mean().backward()
        torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05).step()
    expected = weights.to_candidate(dict(reference.named_parameters()))
    for key, value in candidate.named_parameters():
        err = harness.measure(value, expected[key]).max_abs
        assert err <= 1e-12, f"after one AdamW step {key} differs from its split reference by {err:.3g}"


def test_two_backward_bugs_are_both_introduced_in_backward_order(twins):
    candidate, reference, x = twins
    candidate.blocks[2].act = GeluWrongBackward().eval()
    candidate.blocks[0].ls.through_data = True
    report = harness.compare(candidate, reference, x, backward=True)
    # blocks.0.ls receives a wrong output gradient too: re-running its backward on the reference's
    # output gradient shows that it also makes an error of its own
    assert report.backward.introduced == ["blocks.2.act", "blocks.0.ls"], report.format()
    assert next(r for r in report.backward.rows if r.candidate == "blocks.0.ls").reran


def test_cli_backward_on_two_own_models_compares_the_fused_gradient_with_the_split_ones(tmp_path, capsys):
    from pathlib import Path

    specs = str(Path(__file__).with_name("port_specs.py"))
    path = tmp_path / "report.json"
    code = main(["compare", "--candidate", f"{specs}:fused", "--reference", f"{specs}:split", "--input-shape", "2x5x16",
                 "--dtype", "float64", "--backward", "--json", str(path)])
    assert code == 0, capsys.readouterr().out
    parameters = json.loads(path.read_text())["results"][0]["backward"]["parameters"]
    fused = [p for p in parameters if len(p["reference"]) > 1]
    assert fused and all(p["passed"] and p["transform"].startswith("concat") for p in fused), fused


class _ConvNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))))


class _Folded(nn.Module):
    """The same with the batch norm folded into the conv, as an inference port does."""

    def __init__(self, unfolded: _ConvNorm) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), copy.deepcopy(unfolded.fc)
        bn = unfolded.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        with torch.no_grad():
            self.conv.weight.copy_(unfolded.conv.weight * scale[:, None, None, None])
            self.conv.bias.copy_(bn.bias - bn.running_mean * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)))


def test_gradients_of_parameters_holding_other_values_than_their_sources_are_not_compared():
    reference = _ConvNorm().double().eval()
    with torch.no_grad():
        reference.bn.running_mean.normal_()
        reference.bn.running_var.uniform_(0.5, 1.5)
    candidate = _Folded(reference).double().eval()
    x = torch.randn(2, 3, 6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    backward = harness.compare(candidate, reference, x, backward=True).backward
    compared = [p.candidate for p in backward.parameters]
    assert compared == ["fc.weight", "fc.bias"], compared
    assert any("hold other values than their reference sources" in n and "conv.weight" in n for n in backward.notes), \
        backward.notes
