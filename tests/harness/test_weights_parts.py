"""Tensors one model reads only in parts where the other keeps one tensor per part: branch kernels
stored stacked ``(n, out, in, kh, kw)`` and read ``kernels[i]`` (or ``select``, ``unbind``), one
batch norm over every branch applied by slices, and the other way round; and kernels joined where
used (``torch.stack`` into one grouped convolution), which take the other side's tensors in their
operand order."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import harness
from helpers import transferred
from port_toys import randomized

C, N = 4, 4  # channels per branch, branches (more than a table is cut into)


class _Branches(nn.Module):
    """``N`` branches over channel groups of the input, one convolution and batch norm each. Chained
    (Res2Net's hierarchy: each branch adds the previous branch's output to its group) or independent."""

    def __init__(self, chained: bool = True) -> None:
        super().__init__()
        self.chained = chained
        self.convs = nn.ModuleList(nn.Conv2d(C, C, 3, padding=1, bias=False) for _ in range(N))
        self.bns = nn.ModuleList(nn.BatchNorm2d(C) for _ in range(N))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs, prev = [], None
        for i, group in enumerate(x.split(C, 1)):
            prev = F.relu(self.bns[i](self.convs[i](group if prev is None or not self.chained else group + prev)))
            outs.append(prev)
        return torch.cat(outs, 1)


class _StackedKernels(nn.Module):
    """The chained branches with their kernels in one parameter, ``(N, C, C, 3, 3)``, read per branch
    by ``read``: an integer index, ``select`` or ``unbind``; or stored ``(C, N, C, 3, 3)`` and read
    ``kernels[:, i]`` (``"later dim"``)."""

    def __init__(self, read: str = "index") -> None:
        super().__init__()
        self.read = read
        shape = (C, N, C, 3, 3) if read == "later dim" else (N, C, C, 3, 3)
        self.kernels = nn.Parameter(torch.zeros(shape))
        self.norms = nn.ModuleList(nn.BatchNorm2d(C) for _ in range(N))

    def kernel(self, i: int) -> torch.Tensor:
        if self.read == "select":
            return self.kernels.select(0, i)
        if self.read == "unbind":
            return self.kernels.unbind(0)[i]
        return self.kernels[:, i] if self.read == "later dim" else self.kernels[i]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs, prev = [], None
        for i, group in enumerate(x.split(C, 1)):
            prev = F.relu(self.norms[i](F.conv2d(group if prev is None else group + prev, self.kernel(i), padding=1)))
            outs.append(prev)
        return torch.cat(outs, 1)


class _SlicedNorm(nn.Module):
    """The chained branches with one batch norm over all of them, applied to each by slices of its
    four tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(C, C, 3, padding=1, bias=False) for _ in range(N))
        self.norm = nn.BatchNorm2d(N * C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs, prev, n = [], None, self.norm
        for i, group in enumerate(x.split(C, 1)):
            lo, hi = i * C, (i + 1) * C
            y = self.convs[i](group if prev is None else group + prev)
            prev = F.relu(F.batch_norm(y, n.running_mean[lo:hi], n.running_var[lo:hi], n.weight[lo:hi], n.bias[lo:hi],
                                       False, 0.0, n.eps))
            outs.append(prev)
        return torch.cat(outs, 1)


class _GroupedBranches(nn.Module):
    """Independent branches run as one grouped convolution whose kernel is the branches' kernels
    stacked where used, then one batch norm per branch."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel_list = nn.ParameterList(nn.Parameter(torch.zeros(C, C, 3, 3)) for _ in range(N))
        self.norms = nn.ModuleList(nn.BatchNorm2d(C) for _ in range(N))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = torch.stack(list(self.kernel_list)).reshape(N * C, C, 3, 3)
        z = F.conv2d(x, kernel, padding=1, groups=N)
        return torch.cat([F.relu(norm(part)) for norm, part in zip(self.norms, z.split(C, 1))], 1)


def _images() -> torch.Tensor:
    return torch.randn(2, N * C, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _entry(weights: harness.WeightMap, key: str):
    return {e.candidate: e for e in weights.entries}[key]


def _sources(weights: harness.WeightMap, prefix: str) -> dict[str, tuple[str, ...]]:
    return {e.candidate: e.reference for e in weights.entries if e.candidate.startswith(prefix)}


@pytest.mark.parametrize("read", ["index", "select", "unbind", "later dim"])
def test_stacked_kernels_read_per_branch_take_the_branch_convolutions_stacked(read):
    candidate, reference, weights = transferred(randomized(_StackedKernels(read), 1), randomized(_Branches(), 2),
                                                _images())
    report = harness.compare(candidate, reference, _images(), weights=weights)
    assert weights.verified and weights.coverage == 1.0 and _entry(weights, "kernels").reference == tuple(
        f"convs.{i}.weight" for i in range(N)) and report.passed, \
        f"expected kernels <- convs.0-{N - 1}.weight stacked (read {read}), verified, and the port passing; " \
        f"got:\n{weights}\n{report.format()}"


def test_stacked_kernels_are_the_convolutions_concatenated_and_reshaped():
    _, _, weights = transferred(randomized(_StackedKernels(), 1), randomized(_Branches(), 2), _images())
    assert _entry(weights, "kernels").steps == (
        {"op": "concat", "dim": 0, "sizes": [C] * N}, {"op": "reshape", "shape": [N, C, C, 3, 3]}), \
        f"expected kernels <- concat(dim 0) + reshape({N}, {C}, {C}, 3, 3); got:\n{weights}"


def test_stacked_kernels_read_backward_give_each_convolution_its_kernel():
    candidate, reference, weights = transferred(randomized(_StackedKernels("later dim"), 1),
                                                randomized(_Branches(), 2), _images())
    back = weights.to_reference(dict(candidate.state_dict()))
    wrong = [f"convs.{i}.weight" for i in range(N)
             if not torch.equal(back[f"convs.{i}.weight"], reference.convs[i].weight.detach())]
    assert not wrong, f"read backward, these reference kernels do not come back as they were: {wrong}"


def test_convolutions_against_stacked_kernels_take_their_slices():
    candidate, reference, weights = transferred(randomized(_Branches(), 1), randomized(_StackedKernels(), 2),
                                                _images())
    report = harness.compare(candidate, reference, _images(), weights=weights)
    slices = [(e.reference, e.steps[0]) for e in weights.entries if e.candidate.startswith("convs.")]
    assert weights.verified and report.passed and slices == [
        (("kernels",), {"op": "slice", "dim": 0, "start": i, "stop": i + 1}) for i in range(N)], \
        f"expected convs.i.weight <- kernels[i:i+1] reshaped, verified, and the port passing; got:\n{weights}"


def test_one_norm_applied_by_slices_takes_the_branch_norms_concatenated():
    candidate, reference, weights = transferred(randomized(_SlicedNorm(), 1), randomized(_Branches(), 2), _images())
    report = harness.compare(candidate, reference, _images(), weights=weights)
    expected = {f"norm.{role}": tuple(f"bns.{i}.{role}" for i in range(N))
                for role in ("weight", "bias", "running_mean", "running_var")}
    assert weights.verified and report.passed and _sources(weights, "norm.") == expected, \
        f"expected norm.<role> <- bns.0-{N - 1}.<role> concatenated, verified, and the port passing; got:\n{weights}"


def test_branch_norms_against_one_norm_applied_by_slices_take_its_slices():
    candidate, reference, weights = transferred(randomized(_Branches(), 1), randomized(_SlicedNorm(), 2), _images())
    report = harness.compare(candidate, reference, _images(), weights=weights)
    cuts = {e.candidate: (e.reference, e.steps) for e in weights.entries
            if e.candidate.startswith("bns.") and not e.candidate.endswith("num_batches_tracked")}
    wrong = {key: cut for key, cut in cuts.items() if cut != (
        (f"norm.{key.rsplit('.', 1)[1]}",),
        ({"op": "slice", "dim": 0, "start": int(key.split(".")[1]) * C, "stop": (int(key.split(".")[1]) + 1) * C},))}
    assert weights.verified and report.passed and len(cuts) == 4 * N and not wrong, \
        f"expected bns.i.<role> <- norm.<role>[i*C:(i+1)*C], verified, and the port passing; wrong: {wrong}\n{weights}"


def test_kernels_stacked_where_used_take_the_branch_kernels_in_operand_order():
    # the grouped convolution computes every branch before the first norm: no order of use pairs
    # the kernels one by one, their positions in the stack do
    weights = harness.map_weights(randomized(_GroupedBranches(), 1), randomized(_Branches(chained=False), 2),
                                  _images(), verify=False)
    assert _sources(weights, "kernel_list.") == {f"kernel_list.{i}": (f"convs.{i}.weight",) for i in range(N)}, \
        f"expected kernel_list.i <- convs.i.weight (the i-th operand of the stack) as inferred; got:\n{weights}"


class _ConvolvedLastFirst(_Branches):
    """Independent branches whose convolutions run last branch first, their norms in order after."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups, ys = x.split(C, 1), [None] * N
        for i in reversed(range(N)):
            ys[i] = self.convs[i](groups[i])
        return torch.cat([F.relu(bn(y)) for bn, y in zip(self.bns, ys)], 1)


def test_a_grouped_convolution_of_kernels_joined_where_used_still_tries_their_orders():
    # the operand order pairs kernel_list.0 with the convolution used first (convs.3): only running
    # both models, with the joined kernels taken in another order, tells the right one
    candidate, reference, weights = transferred(randomized(_GroupedBranches(), 1),
                                                randomized(_ConvolvedLastFirst(chained=False), 2), _images())
    report = harness.compare(candidate, reference, _images(), weights=weights)
    assert weights.verified and report.passed and _sources(weights, "kernel_list.") == {
        f"kernel_list.{i}": (f"convs.{i}.weight",) for i in range(N)}, \
        f"expected kernel_list.i <- convs.i.weight once verified, and the port passing; got:\n{weights}\n" \
        f"{report.format()}"


def test_a_tensor_read_whole_besides_its_parts_is_not_cut():
    # the same kernels read in parts by the branches and whole by a grouped convolution: one tensor
    class ReadBothWays(_StackedKernels):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) + F.conv2d(x, self.kernels.reshape(N * C, C, 3, 3), padding=1, groups=N)

    weights = harness.map_weights(randomized(ReadBothWays(), 1), randomized(_Branches(), 2), _images(), verify=False)
    assert "kernels" in weights.unmatched["candidate"] and not any("[" in e.candidate for e in weights.entries), \
        f"expected kernels left whole (and unmatched: nothing holds it whole); got:\n{weights}"
