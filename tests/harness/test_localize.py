"""Localization on toy pairs: an unmodified pair passes; injected bugs are named precisely."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import harness
from harness_toys import TOY, TOY_RENAMED, Net, drop_residual
from helpers import PARITY_DTYPES
from port_toys import NormAct, randomized


def test_build_is_deterministic_and_weights_are_live():
    c1, r1 = TOY.build(dtype=torch.float64)
    c2, r2 = TOY.build(dtype=torch.float64)
    for (k, a), b, c in zip(c1.state_dict().items(), c2.state_dict().values(), r1.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c), k
    assert c1.blocks[0].fc1.bias.abs().max() > 0  # biases re-drawn, not the zero init
    assert c1.blocks[0].norm.weight.dtype == torch.float64 and not c1.training
    assert torch.equal(TOY.inputs(dtype=torch.float64).args[0], TOY.inputs(dtype=torch.float64).args[0])


@pytest.mark.parametrize("dtype", PARITY_DTYPES)
def test_parity_toy_unmodified_pair_passes(dtype):
    report = harness.compare_pair(TOY, dtype=dtype)
    assert report.passed and report.first_divergence is None and report.culprit is None
    assert len(report.rows) == 3 * 5 + 3 and not report.unmatched_candidate


def test_parity_toy_renamed_reference_aligns_through_rules():
    report = harness.compare_pair(TOY_RENAMED, dtype=torch.float64)
    assert report.passed, report.format()
    hows = {r.candidate: r.match.how for r in report.rows}
    assert hows["blocks.1.fc1"] == "rename" and hows["<root>"] == "name"
    # Sequential/ModuleList containers have no twin by name; structure pairs what has a shape twin.
    assert report.output.max_abs < 1e-12


@pytest.mark.parametrize("bug, module", [
    (lambda m: setattr(m.blocks[1].norm, "eps", 1e-3), "blocks.1.norm"),
    (lambda m: setattr(m.blocks[2].act, "approximate", "tanh"), "blocks.2.act"),
    (lambda m: m.blocks[1].fc2.bias.data.add_(1e-7), "blocks.1.fc2"),
    (lambda m: drop_residual(m.blocks[1]), "blocks.1"),
])
def test_injected_bug_is_localized(bug, module):
    candidate, _ = TOY.build(dtype=torch.float64)
    bug(candidate)
    report = harness.compare_pair(TOY, candidate=candidate, dtype=torch.float64)
    assert not report.passed
    assert report.first_divergence == module and report.culprit == module, report.format()
    statuses = {r.candidate: r.status for r in report.rows}
    assert statuses[module] == "introduced"
    assert statuses["<root>"] == "contains" and statuses["head"] == "propagated"


def test_culprit_found_by_rerun_when_inputs_already_differ_slightly():
    """A tiny upstream difference (within tolerance) plus a real bug downstream: the re-run on
    reference inputs tells the downstream module's own error from the inherited one."""
    candidate, _ = TOY.build(dtype=torch.float32)
    candidate.blocks[0].fc2.bias.data.add_(1e-7)  # far below float32 tolerance
    candidate.blocks[2].norm.eps = 1e-2
    report = harness.compare_pair(TOY, candidate=candidate, dtype=torch.float32)
    assert report.culprit == "blocks.2.norm"
    row = next(r for r in report.rows if r.candidate == "blocks.2.norm")
    assert row.reran and row.status == "introduced"


def test_compare_accepts_tuple_dict_and_call_inputs():
    class TwoArgs(torch.nn.Module):
        def forward(self, x, *, shift):
            return x + shift

    a, b = TwoArgs(), TwoArgs()
    x, s = torch.ones(2), torch.full((2,), 3.0)
    assert harness.compare(a, b, harness.Call((x,), {"shift": s})).passed
    assert harness.compare(Net(), Net(), torch.zeros(1, 5, 8), dtype=torch.float32).rows
    with pytest.raises(TypeError, match="inputs must be a Tensor"):
        harness.compare(a, b, [x])


def test_compare_pair_errors_name_what_was_expected():
    with pytest.raises(ValueError, match="no pair named 'convnxt_tiny'"):
        harness.compare_pair("convnxt_tiny")
    with pytest.raises(TypeError, match="candidate must be an nn.Module"):
        harness.compare_pair(TOY, candidate="model")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating torch.dtype"):
        TOY.build(dtype=torch.int32)


def test_different_output_structures_need_output_functions():
    class Tup(torch.nn.Module):
        def forward(self, x):
            return x, x * 2, x * 3

    with pytest.raises(ValueError, match="final outputs differ in structure"):
        harness.compare(Tup(), Net(depth=1), torch.zeros(1, 5, 8))


def test_parity_toy_extra_identity_on_one_side_is_listed_not_fatal():
    candidate, reference = TOY.build(dtype=torch.float64)
    extended = Net(extra_identity=True).double().eval()
    extended.load_state_dict(candidate.state_dict())
    report = harness.compare(extended, reference, TOY.inputs(dtype=torch.float64))
    assert report.passed and not report.unmatched_candidate and not report.unmatched_reference
    assert report.passthrough_candidate == ["pre#0"]  # listed apart: an Identity computes nothing
    assert report.to_dict()["passthrough"] == {"candidate": ["pre#0"], "reference": []}
    assert "1 pass-through calls" in report.format()


def test_unmatched_module_that_computes_is_listed_as_unmatched():
    class Scaled(Net):
        def __init__(self):
            super().__init__(extra_identity=True)
            self.pre = torch.nn.Dropout(p=0.5)  # in training mode it computes: not a pass-through

    candidate, reference = TOY.build(dtype=torch.float64)
    extended = Scaled().double().train()
    extended.load_state_dict(candidate.state_dict())
    report = harness.compare(extended, reference, TOY.inputs(dtype=torch.float64))
    assert "pre#0" in report.unmatched_candidate and not report.passthrough_candidate


def test_module_without_tensor_inputs_can_be_the_culprit():
    """A table built from integers (a RoPE grid) gets no error through inputs: it makes its own."""

    class Table(torch.nn.Module):
        def __init__(self, scale: float):
            super().__init__()
            self.scale = scale

        def forward(self, n: int) -> torch.Tensor:
            return torch.arange(n, dtype=torch.float64) * self.scale

    class Model(torch.nn.Module):
        def __init__(self, scale: float):
            super().__init__()
            self.table = Table(scale)
            self.proj = torch.nn.Linear(4, 4).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x + self.table(x.shape[-1]))

    reference, candidate = Model(1.0), Model(1.5)
    candidate.load_state_dict(reference.state_dict())
    report = harness.compare(candidate, reference, torch.randn(2, 4, dtype=torch.float64))
    assert report.first_divergence == "table" and report.culprit == "table"


def test_summary_mode_compares_statistics_and_still_localizes():
    assert harness.compare_pair(TOY, dtype=torch.float64, mode="summary").passed
    candidate, _ = TOY.build(dtype=torch.float64)
    candidate.blocks[1].norm.eps = 1e-2
    report = harness.compare_pair(TOY, candidate=candidate, dtype=torch.float64, mode="summary")
    assert not report.passed and report.mode == "summary"
    assert report.first_divergence == "blocks.1.norm" and report.culprit == "blocks.1.norm"
    assert "summary mode: layer errors are lower bounds" in report.format()
    row = next(r for r in report.rows if r.candidate == "blocks.1.norm")
    assert row.metrics.max_abs > 0 and row.metrics.rel_l2 != row.metrics.rel_l2  # unknown: NaN


class _Mlp(torch.nn.Module):
    """A two-layer MLP under names of its own; ``approximate`` is its GELU's."""

    def __init__(self, names: tuple[str, str, str], approximate: str = "none") -> None:
        super().__init__()
        self.names = names
        up, act, down = names
        setattr(self, up, torch.nn.Linear(8, 24))
        setattr(self, act, torch.nn.GELU(approximate=approximate))
        setattr(self, down, torch.nn.Linear(24, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, act, down = (getattr(self, n) for n in self.names)
        return down(act(up(x)))


def test_a_culprit_twinned_by_position_only_is_also_the_first_divergence():
    reference = _Mlp(("fc1", "act", "fc2")).double().eval()
    candidate = _Mlp(("up", "nonlin", "down"), approximate="tanh").double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, x, weights=weights)
    assert (report.culprit, report.first_divergence) == ("nonlin", "nonlin"), report.format()


def test_a_dropped_residual_whose_shortcut_is_never_called_blames_the_block():
    from port_toys import ShortcutFirst, ShortcutLast, randomized

    reference, candidate = randomized(ShortcutLast(), 2), randomized(ShortcutFirst(), 1)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    candidate.residual = False
    report = harness.compare(candidate, reference, x, weights=weights)
    assert report.culprit == "<root>", report.format()


class _ConvNorm(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))).mean((2, 3))


def test_a_norm_folded_into_its_conv_is_named_as_folded_not_left_to_the_weights():
    from port_toys import randomized
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    reference = randomized(_ConvNorm(), 2)
    candidate = randomized(_ConvNorm(), 2)
    candidate.conv, candidate.bn = fuse_conv_bn_eval(candidate.conv, candidate.bn), torch.nn.Identity().eval()
    report = harness.compare(candidate, reference, torch.randn(1, 3, 9, 11, dtype=torch.float64))
    assert any(n.startswith("conv gives what the reference's conv and then bn give together") for n in report.notes), \
        report.format()


class _ConvHWIO(nn.Module):
    """A 3x3 conv on channels-last activations with its kernel stored (kh, kw, C_in, C_out)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(3, 3, 4, 4, dtype=torch.float64))
        self.stride, self.layout = stride, (3, 2, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x.permute(0, 3, 1, 2), self.kernel.permute(*self.layout), None, self.stride, 1).permute(0, 2, 3, 1)


class _ChannelsLastPort(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _ConvHWIO(2), _ConvHWIO(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.relu(self.a(x.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)


def test_a_right_channels_last_conv_after_a_wrong_one_is_not_an_origin_on_square_maps():
    # on square maps NHWC fits NCHW two ways (H and W exchanged); the wrong input b receives cannot
    # tell which, so b is re-run in both before it is named
    reference = randomized(nn.Sequential(nn.Conv2d(4, 4, 3, 2, 1, bias=False), nn.ReLU(),
                                         nn.Conv2d(4, 4, 3, 1, 1, bias=False)), 2)
    candidate = _ChannelsLastPort().double().eval()
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    candidate.a.layout = (3, 2, 1, 0)  # the kernel's spatial axes exchanged
    report = harness.compare(candidate, reference, x, weights=weights)
    assert report.introduced == ["a"], report.format()


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.fc1, self.norm2, self.fc2 = nn.LayerNorm(8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.fc1(self.norm1(x))
        return x + self.fc2(self.norm2(x))


class _TokenInRoot(nn.Module):
    """Blocks after a class token prepended in the model's own code."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.blocks = nn.Sequential(_Block(), _Block())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1))


class _Embeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.token.expand(x.shape[0], -1, -1), x], 1)


class _TokenInEmbeddings(nn.Module):
    """The same with the token in an embeddings module the reference has no twin for."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = _Embeddings()
        self.layers = nn.Sequential(_Block(), _Block())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.embeddings(x))


def _token_changed() -> tuple[nn.Module, nn.Module, torch.Tensor, harness.WeightMap]:
    """The token pair, transferred, with one element of the candidate's token changed."""
    reference, candidate = randomized(_TokenInRoot(), 2), randomized(_TokenInEmbeddings(), 1)
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    with torch.no_grad():
        candidate.embeddings.token[0, 0, 3] += 0.01
    return candidate, reference, x, weights


def test_code_without_a_twin_before_a_block_stays_an_origin_when_the_block_makes_another_error():
    candidate, reference, x, weights = _token_changed()
    candidate.layers[0].norm2.eps = 1e-3
    report = harness.compare(candidate, reference, x, weights=weights)
    assert report.introduced == ["embeddings", "layers.0.norm2"], report.format()


class _ActInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(3, 8, 3, padding=1, bias=False), NormAct(8, nn.ReLU(inplace=True)), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv(x)))


class _ActInCaller(nn.Module):
    """The same with the activation applied by the caller's own code."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.bn(self.conv(x))))


def _act_pair(dtype: torch.dtype = torch.float64):
    candidate, reference = randomized(_ActInside(), 1).to(dtype), randomized(_ActInCaller(), 2).to(dtype)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    return candidate, reference, x, weights


def test_a_norm_applying_its_activation_inside_receives_an_upstream_error_as_its_twin_does():
    candidate, reference, x, weights = _act_pair()
    with torch.no_grad():
        candidate.conv.weight[2, 1, 1, 1] += 0.01
    report = harness.compare(candidate, reference, x, weights=weights)
    assert report.introduced == ["conv"], report.format()


def test_a_module_whose_own_code_errs_before_a_child_without_a_twin_is_the_origin_not_the_child():
    class Scores(nn.Module):
        def __init__(self, scale: float) -> None:
            super().__init__()
            self.qk, self.scale = nn.Linear(16, 32), scale
            self.softmax = nn.Softmax(-1) if scale != 1.0 else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k = self.qk(x).chunk(2, -1)
            logits = q @ k.transpose(-1, -2) * self.scale
            return (self.softmax(logits) if self.softmax is not None else F.softmax(logits, -1)) @ x

    candidate, reference = randomized(Scores(1.1), 1), randomized(Scores(1.0), 2)
    x = torch.randn(1, 10, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    report = harness.compare(candidate, reference, x, weights=weights)
    assert report.culprit == "<root>" and report.introduced == ["<root>"], report.format()


def test_at_float32_a_norm_twinned_with_a_norm_and_its_activation_is_judged_against_their_float64_output():
    # the reference's norm and activation are two modules, joined to pair with the candidate's one
    candidate = randomized(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), NormAct(8, nn.ReLU(inplace=True)), nn.Conv2d(8, 4, 1)), 1)
    reference = randomized(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                         nn.Conv2d(8, 4, 1)), 2)
    candidate, reference = candidate.float(), reference.float()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    candidate[1].eps = 1e-3
    report = harness.compare(candidate, reference, x, weights=weights)
    row = next(r for r in report.rows if r.candidate == "1")
    assert row.noise is not None and not row.noise.passed and report.culprit == "1", report.format()


def test_a_projection_twinned_with_a_slice_of_a_fused_one_is_re_run_on_its_inputs():
    # its twin has no module of its own, but the fused call's arguments: without a re-run, inputs
    # that agree within tolerance would name a projection that only received an error an origin
    from port_toys import FusedBlock, SplitBlock

    candidate, reference = randomized(nn.Sequential(SplitBlock(), SplitBlock()), 1), \
        randomized(nn.Sequential(FusedBlock(), FusedBlock()), 2)
    x = torch.randn(2, 5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    candidate[0].ln_a.eps = 1e-3
    report = harness.compare(candidate, reference, x, weights=weights)
    sliced = [r for r in report.rows if r.reference.startswith("1.qkv[")]
    assert sliced and all(r.reran and r.status == "propagated" for r in sliced), \
        [(r.candidate, r.reference, r.status, r.reran) for r in sliced]


def _activation_swapped_after_a_joined_norm() -> harness.ParityReport:
    """The candidate's norm and activation (joined to pair with a norm applying it inside), the
    activation a SiLU where the reference applies a ReLU."""
    candidate = randomized(nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()), 1)
    reference = randomized(nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), NormAct(8, nn.ReLU(inplace=True))), 2)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    candidate[2] = nn.SiLU()
    return harness.compare(candidate, reference, x, weights=weights)


def test_the_first_divergence_of_a_norm_joined_with_its_activation_is_the_part_blamed():
    report = _activation_swapped_after_a_joined_norm()
    assert (report.culprit, report.first_divergence) == ("2", "2"), report.format()


def test_the_row_of_a_norm_joined_with_its_activation_is_named_after_the_part_blamed():
    report = _activation_swapped_after_a_joined_norm()
    introduced = [(r.candidate, r.reference) for r in report.rows if r.status == "introduced"]
    assert introduced == [("2", "1")], f"the table blames other rows than the culprit 2:\n{report.format()}"


class _BranchBlock(nn.Module):
    """A residual block whose branch is a child module: the block and the branch hold the same tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                               nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x + self.f(x))


class _FlatBlock(nn.Module):
    """The same block with its layers as direct children; ``residual=False`` drops the shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return self.act(y + x if self.residual else y)


def test_a_block_dropping_its_residual_is_blamed_though_its_output_is_nearer_the_twins_inner_branch():
    # the verified map remembers that the block's twin is the reference's block, not its branch
    candidate = randomized(nn.Sequential(nn.Conv2d(3, 8, 1), _FlatBlock(), _FlatBlock()), 1)
    reference = randomized(nn.Sequential(nn.Conv2d(3, 8, 1), _BranchBlock(), _BranchBlock()), 2)
    with torch.no_grad():  # a branch small against the shortcut: relu(branch) is nearer the branch than the block
        for block in reference[1:]:
            block.f[4].weight.mul_(0.05)
            block.f[4].bias.mul_(0.05)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    candidate[2].residual = False
    report = harness.compare(candidate, reference, x, weights=weights)
    assert report.culprit == "2", report.format()


def test_a_changed_tensor_of_a_module_without_a_twin_is_explained_as_holding_other_values():
    candidate, reference, x, weights = _token_changed()
    report = harness.compare(candidate, reference, x, weights=weights)
    assert report.culprit == "embeddings" and report.diagnosis and report.diagnosis[0]["text"].startswith(
        "embeddings: token holds other values than the reference's cls_token"), report.format()


class _MlpBlock(nn.Module):
    """A pre-norm MLP block whose MLP is a container of its own; ``approximate`` its GELU's."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(32)
        self.mlp = nn.Sequential(OrderedDict(fc1=nn.Linear(32, 128), act=nn.GELU(approximate=approximate),
                                             fc2=nn.Linear(128, 32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class _FlatMlpBlock(nn.Module):
    """The same block with the MLP's layers its own children (no container to twin the MLP with)."""

    def __init__(self) -> None:
        super().__init__()
        self.ln, self.a, self.g, self.b = nn.LayerNorm(32), nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.g(self.a(self.ln(x))))


def test_a_tanh_gelu_within_the_float32_tolerance_of_its_twin_is_still_the_culprit():
    candidate = nn.Sequential(_MlpBlock(), _MlpBlock()).float()
    reference = randomized(nn.Sequential(_FlatMlpBlock(), _FlatMlpBlock()), 2).float()
    with torch.no_grad():
        for block in reference:
            block.ln.weight.mul_(4)  # pre-activations of a few units: the GELUs differ by 4.7e-4 at most
    x = torch.randn(2, 49, 32, generator=torch.Generator().manual_seed(0))
    weights = harness.map_weights(candidate, reference, x)
    weights.transfer(reference, candidate)
    candidate[1].mlp.act.approximate = "tanh"
    report = harness.compare(candidate, reference, x, weights=weights)
    act = next(r for r in report.rows if r.candidate == "1.mlp.act")
    assert act.metrics.passes(act.tolerance), f"the GELUs now differ beyond the float32 tolerance: the test no longer tests\n{report.format()}"
    assert report.culprit == "1.mlp.act", report.format()


class _TransposingBlock(nn.Module):
    """Two convolutions; ``transpose`` runs the second on the map with H and W exchanged, and back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.transpose = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        return self.conv2(y.transpose(2, 3)).transpose(2, 3) if self.transpose else self.conv2(y)


def test_a_block_handing_its_conv_a_transposed_map_is_the_culprit_not_the_conv():
    reference = randomized(_TransposingBlock(), 1)
    candidate = randomized(_TransposingBlock(), 2)
    candidate.load_state_dict(reference.state_dict())
    candidate.transpose = True
    x = torch.randn(2, 4, 6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    report = harness.compare(candidate, reference, x)
    # a convolution reads (B, C, H, W) in any model: given the reference's input, conv2 gives its output
    assert report.culprit == "<root>", report.format()
