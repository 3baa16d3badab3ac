"""What the tracer keeps at the least cost: one copy per piece of memory, statistics from few passes.

A full trace copies each output once; an input that is a view of an output already copied (the
permute or slice between two modules) becomes the same view of that copy. Summary statistics come
from three vectorized passes (sum, dot, aminmax) with a centred pass where the mean dominates;
they must agree with a float64 computation whatever the layout.
"""

from __future__ import annotations

import math
import resource

import pytest
import torch
from torch import nn

from harness import Tracer, trace
from harness.trace import TensorSummary


class ViewBetweenModules(nn.Module):
    """``a``'s output reaches ``b`` permuted and ``c`` sliced, or changed in place first."""

    def __init__(self, *, in_place: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 8)
        self.in_place = in_place

    def forward(self, x: torch.Tensor):
        y = self.a(x)
        z = self.b(y.permute(1, 0, 2))
        if self.in_place:
            y.mul_(2.0)
        return z, self.c(y[:, 1:])


def _trace(model: nn.Module, x: torch.Tensor) -> dict:
    with torch.no_grad(), Tracer(model, mode="full") as tracer:
        model(x)
    return tracer.by_key()


def test_a_view_between_modules_is_kept_as_the_same_view_of_the_producers_copy():
    model, x = ViewBetweenModules().eval(), torch.randn(2, 3, 8)
    records = _trace(model, x)
    with torch.no_grad():
        y = model.a(x)
    kept = records["a#0"].outputs[""]
    for key, expected in (("b#0", y.permute(1, 0, 2)), ("c#0", y[:, 1:])):
        view = records[key].inputs["args.0"]
        assert torch.equal(view, expected), f"{key}'s recorded input differs from what it received"
        assert view.untyped_storage().data_ptr() == kept.untyped_storage().data_ptr(), \
            f"{key}'s input was copied again instead of viewing a's kept output"


def test_a_view_changed_in_place_after_its_base_was_copied_is_copied_as_it_is_then():
    model, x = ViewBetweenModules(in_place=True).eval(), torch.randn(2, 3, 8)
    records = _trace(model, x)
    with torch.no_grad():
        y = model.a(x)
    assert torch.equal(records["a#0"].outputs[""], y), "a's kept output followed the later in-place change"
    assert torch.equal(records["c#0"].inputs["args.0"], (y * 2.0)[:, 1:]), "c's input is not the doubled tensor it saw"


@pytest.mark.parametrize("case", ["channels_last_view", "transposed_tokens", "offset_permuted_slice", "gapped_slice",
                                  "expanded", "large_mean", "constant", "integer", "bfloat16"])
def test_summary_statistics_agree_with_float64_whatever_the_layout(case: str):
    g = torch.Generator().manual_seed(0)
    x = {
        "channels_last_view": torch.randn(2, 9, 10, 16, generator=g).permute(0, 3, 1, 2),
        "transposed_tokens": torch.randn(2, 16, 7, generator=g).transpose(1, 2),
        "offset_permuted_slice": torch.randn(3, 5, 6, 4, generator=g)[1:].permute(0, 3, 1, 2),  # dense, not at offset 0
        "gapped_slice": torch.randn(6, 8, generator=g)[:, ::2],
        "expanded": torch.randn(5, 1, 3, generator=g).expand(5, 4, 3),  # overlapping: every element read 4 times
        "large_mean": torch.randn(4096, generator=g) * 1e-3 + 100.0,
        "constant": torch.full((7, 5), 3.25),
        "integer": torch.randint(-50, 50, (33, 3), generator=g),
        "bfloat16": torch.randn(64, 64, generator=g).to(torch.bfloat16),
    }[case]
    s, exact = TensorSummary.of(x), x.double()
    assert s.shape == tuple(x.shape) and s.nonfinite == 0
    assert math.isclose(s.mean, exact.mean().item(), rel_tol=1e-6, abs_tol=1e-6), f"mean {s.mean} vs {exact.mean().item()}"
    assert math.isclose(s.std, exact.std().item(), rel_tol=1e-4, abs_tol=1e-9), f"std {s.std} vs {exact.std().item()}"
    assert s.absmax == exact.abs().max().item(), f"absmax {s.absmax} vs {exact.abs().max().item()}"


# -- a second trace shares the copies of the first where they agree bitwise -----------------------
def _twins(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    first = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8), nn.LayerNorm(8))
    second = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8), nn.LayerNorm(8))
    second.load_state_dict(first.state_dict())
    return first, second


def _traced_pair(first: nn.Module, second: nn.Module, x: torch.Tensor, budget=None) -> tuple[dict, dict]:
    with torch.no_grad():
        with Tracer(first, budget=budget) as one:
            first(x)
        with Tracer(second, share=one, budget=budget) as two:
            second(x)
    return one.by_key(), two.by_key()


def test_a_second_trace_keeps_bitwise_equal_tensors_as_the_first_traces_copies():
    one, two = _traced_pair(*_twins(), torch.randn(3, 8))
    for key, record in two.items():
        for leaf, tensor in record.outputs.items():
            assert tensor is one[key].outputs[leaf], f"{key} {leaf}: a second copy of equal values"


def test_tensors_that_differ_are_copied_with_their_own_values():
    first, second = _twins()
    with torch.no_grad():
        second[2].weight[0, 0] += 1e-3  # from the second linear layer on, the outputs differ
    x = torch.randn(3, 8)
    one, two = _traced_pair(first, second, x)
    assert two["0#0"].outputs[""] is one["0#0"].outputs[""]
    with torch.no_grad():
        expected = second[:3](x)
    assert two["2#0"].outputs[""] is not one["2#0"].outputs[""]
    assert torch.equal(two["2#0"].outputs[""], expected)


def test_a_layout_that_differs_is_not_shared():
    first, second = _twins()
    x = torch.randn(3, 8)
    with torch.no_grad():
        with Tracer(first) as one:
            first(x)
        with Tracer(second, share=one) as two:
            second(x.t().contiguous().t())  # the same values with transposed strides
    assert not torch.equal(torch.tensor(x.stride()), torch.tensor(x.t().contiguous().t().stride()))
    assert two.by_key()["0#0"].inputs["args.0"] is not one.by_key()["0#0"].inputs["args.0"]
    assert torch.equal(two.by_key()["0#0"].inputs["args.0"], x)


def test_shared_copies_are_not_charged_to_the_memory_budget():
    from harness.memory import MemoryBudget

    budget = MemoryBudget(2 ** 40)
    _traced_pair(*_twins(), torch.randn(3, 8), budget=budget)
    charged = list(budget._kept.values())  # bytes per tracer that was charged, in order
    assert len(charged) == 1 and charged[0] > 0, f"expected the first trace alone to be charged: {charged}"


def test_share_must_be_a_tracer():
    with pytest.raises(TypeError, match="share"):
        Tracer(nn.Linear(2, 2), share="trace.safetensors")


def test_a_comparison_keeps_the_layers_that_agree_bitwise_once():
    import harness

    first, second = _twins()
    with torch.no_grad():
        second[3].weight[0] += 1e-3  # the last layer alone differs
    report = harness.compare(first, second, torch.randn(3, 8, dtype=torch.float32))
    shared = {row.candidate for row in report.rows
              if all(t is row.match.candidate.outputs[k] for k, t in row.match.reference.outputs.items())}
    assert shared == {"0", "1", "2"}, f"kept once: {sorted(shared)}"



def _minor_faults(run) -> int:
    """Pages the kernel mapped (minor faults) while ``run()`` ran."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    run()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _traced(model: nn.Module, x: torch.Tensor) -> Tracer:
    with torch.no_grad(), Tracer(model, mode="full") as tracer:
        model(x)
    return tracer


@pytest.fixture
def arena_for_all(monkeypatch):
    """Every copy in arena blocks (of the usual size, mapped as they are written), so that the
    forward's own small tensors come from memory ``malloc`` mapped before and the pages written
    are the copies'."""
    monkeypatch.setattr(trace._Arena, "SMALLEST", 0)
    trace._SPARE_BLOCKS.clear()
    yield
    trace._SPARE_BLOCKS.clear()


def test_a_trace_writes_its_copies_into_pages_a_dropped_trace_had_mapped(arena_for_all):
    model, x = nn.Sequential(*(nn.Linear(96, 96) for _ in range(16))).eval(), torch.randn(256, 96)
    _traced(model, x)
    pages = sum(r.outputs[""].nbytes for r in _traced(model, x).records) // 4096
    faults = min(_minor_faults(lambda: _traced(model, x)) for _ in range(3))
    assert faults < pages // 4, f"a trace copying {pages} pages of outputs mapped {faults} new pages"


def test_a_block_holding_copies_of_a_live_trace_is_never_written_by_another(arena_for_all):
    model, x = nn.Sequential(nn.Linear(96, 96), nn.Linear(96, 96)).eval(), torch.randn(256, 96)
    first = _traced(model, x)
    kept = {r.key: r.outputs[""].clone() for r in first.records}
    second = _traced(model, 2 * x)
    blocks = [{r.outputs[""].untyped_storage().data_ptr() for r in t.records} for t in (first, second)]
    assert not blocks[0] & blocks[1], "two live traces share an arena block"
    changed = [key for key, value in kept.items() if not torch.equal(first.by_key()[key].outputs[""], value)]
    assert not changed, f"copies of the first trace changed while the second traced: {changed}"
