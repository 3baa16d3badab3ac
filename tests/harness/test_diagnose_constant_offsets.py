"""Relative offsets a port computes in its forward (``arange``, ``meshgrid``, differences, a
``stack``) against the reference's table of them held as a buffer (ConViT's ``rel_indices``). What
the forward computes from no input and no parameter is a constant operand: the ops building it are
no extra ops, and where the values differ the operand is compared with the buffer as a parameter is
(x and y offsets exchanged: its channels reordered)."""

import torch
from torch import nn

from harness.diagnose import diagnose_modules

SIDE, HEADS = 3, 2


def offsets(exchanged: bool = False) -> torch.Tensor:
    """``(N, N, 3)``: x offset, y offset and squared distance between the tokens of a SIDE x SIDE grid."""
    r = torch.arange(SIDE, dtype=torch.float64)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    ys, xs = yy.flatten(), xx.flatten()
    dx, dy = xs[None, :] - xs[:, None], ys[None, :] - ys[:, None]
    if exchanged:
        dx, dy = dy, dx
    return torch.stack([dx, dy, dx ** 2 + dy ** 2], -1)


class BufferedOffsets(nn.Module):
    """Position scores per head from the offsets, held in a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.pos_proj = nn.Linear(3, HEADS)
        self.register_buffer("rel_indices", offsets()[None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.pos_proj(self.rel_indices.expand(x.shape[0], -1, -1, -1)).permute(0, 3, 1, 2).softmax(-1)
        return scores @ x[:, None]


class ComputedOffsets(nn.Module):
    """The same scores, the offsets computed in the forward; ``exchanged``: x and y offsets swapped."""

    def __init__(self, exchanged: bool = False) -> None:
        super().__init__()
        self.pos = nn.Linear(3, HEADS)
        self.exchanged = exchanged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.pos(offsets(self.exchanged)).permute(2, 0, 1).softmax(-1)
        return scores[None] @ x[:, None]


def _findings(exchanged: bool) -> list[dict]:
    torch.manual_seed(0)
    reference, candidate = BufferedOffsets().double(), ComputedOffsets(exchanged).double()
    candidate.pos.load_state_dict(reference.pos_proj.state_dict())
    x = torch.randn(2, SIDE * SIDE, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return diagnose_modules(candidate, reference, (x,), {})


def _texts(findings: list[dict]) -> str:
    return "\n".join(f["text"] for f in findings) or "(no finding)"


def test_offsets_computed_in_the_forward_are_no_finding() -> None:
    found = _findings(exchanged=False)
    assert not found, f"expected no finding for offsets computed as the buffer holds them, got:\n{_texts(found)}"


def test_exchanged_offsets_are_the_constant_operand_reordered() -> None:
    found = _findings(exchanged=True)
    assert found and found[0]["text"] == (
        "pos: linear operand input (a constant from stack) holds the reference's rel_indices reordered: dim 3 "
        "[0:1] holds the reference's [1:2], [1:2] holds the reference's [0:1]"), \
        f"expected the linear's constant input said to hold the buffer's channels exchanged, got:\n{_texts(found)}"


def test_ops_building_a_constant_are_no_extra_ops() -> None:
    found = _findings(exchanged=True)
    extra = [f["op"] for f in found if f["kind"] == "extra_op"]
    assert not extra, f"expected no extra op for the ops computing the offsets, got:\n{_texts(found)}"
