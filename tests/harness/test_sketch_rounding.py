"""Golden traces of a float64 model that computes some operations in float32.

That float32 rounding is machine-dependent (vectorized ``exp`` and reductions differ between CPU
instruction sets), so a golden recorded on one machine must not fail on another for it, while a
real change beyond it still must. Here "another machine" is the same softmax rounded through
another float32 code path: both runs round the same exact values differently.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.pairs import Call
from harness.sketch import LayerSketch, diff_golden, golden_trace


class Float32Softmax(nn.Module):
    """Attention weights computed in float32 inside a float64 model, as transformers' eager
    attention does (``softmax(..., dtype=torch.float32)``); ``written_out``: the same values through
    ``exp / sum``, which rounds differently."""

    def __init__(self, written_out: bool = False) -> None:
        super().__init__()
        self.written_out = written_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.written_out:
            e = torch.exp(x.float() - x.float().amax(-1, keepdim=True))
            return (e / e.sum(-1, keepdim=True)).to(x.dtype)
        return torch.softmax(x, -1, dtype=torch.float32).to(x.dtype)


class Toy(nn.Module):
    def __init__(self, written_out: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(64, 64).double()
        self.attn = Float32Softmax(written_out)
        self.out = nn.Linear(64, 8).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.attn(self.proj(x) * 4))


def _doc(model: nn.Module, rounding: bool) -> dict:
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return golden_trace(model, Call((x,)), name="toy", rounding=rounding)


def test_a_golden_records_each_layers_distance_from_the_exact_run() -> None:
    doc = _doc(Toy(), rounding=True)
    assert doc["rounding"]["ops"] == ["softmax"], doc["rounding"]
    assert doc["layers"]["proj#0"].rounding is None, "the layer before the float32 softmax rounds nothing"
    rel, off_slice, off_stats = doc["layers"]["attn#0"].rounding
    assert 1e-9 < rel < 1e-6 and off_slice < 1e-6 and off_stats < 1e-6, doc["layers"]["attn#0"].rounding


def test_the_rounding_survives_the_json_form() -> None:
    layer = _doc(Toy(), rounding=True)["layers"]["attn#0"]
    assert LayerSketch.from_json(layer.to_json()) == layer


def test_another_float32_rounding_moves_layers_without_the_allowance() -> None:
    found = diff_golden(_doc(Toy(written_out=True), rounding=False), _doc(Toy(), rounding=False))
    assert [m.key for m in found.moved][:1] == ["attn#0"], found.format()


def test_another_float32_rounding_is_within_the_references_own_rounding() -> None:
    found = diff_golden(_doc(Toy(written_out=True), rounding=True), _doc(Toy(), rounding=True))
    assert not found.changed, found.format()
    assert any("own rounding" in n and "softmax" in n for n in found.notes), found.notes


def test_a_golden_recorded_without_its_rounding_takes_the_fresh_runs() -> None:
    found = diff_golden(_doc(Toy(written_out=True), rounding=True), _doc(Toy(), rounding=False))
    assert not found.changed, found.format()


def test_a_weight_change_beyond_the_rounding_still_moves_its_layer() -> None:
    changed = Toy(written_out=True)
    with torch.no_grad():
        changed.proj.weight[0, 0] += 1e-6
    found = diff_golden(_doc(changed, rounding=True), _doc(Toy(), rounding=True))
    assert [m.key for m in found.moved][:1] == ["proj#0"], found.format()


def test_a_model_without_narrow_operations_records_no_rounding() -> None:
    model = nn.Sequential(nn.Linear(64, 8)).double()
    doc = _doc(model, rounding=True)
    assert doc["rounding"] == {"ops": []} and all(v.rounding is None for v in doc["layers"].values()
                                                  if isinstance(v, LayerSketch)), doc["rounding"]


def test_a_change_after_the_float32_softmax_beyond_its_rounding_still_moves() -> None:
    changed = Toy(written_out=True)
    with torch.no_grad():
        changed.out.weight[0, 0] += 1e-4
    found = diff_golden(_doc(changed, rounding=True), _doc(Toy(), rounding=False))
    assert [m.key for m in found.moved][:1] == ["out#0"], found.format()
