"""An attention whose q, k and v are ``F.linear`` calls on row slices of one stored ``in_proj_weight``
(DETR's port) against a reference with separate ``q_proj``/``k_proj``/``v_proj`` pairs projection
with projection: the reference's q and k, which read one input, are joined into a fused op only
where the other side holds an op the weight map fills with their rows, never with an MLP's linear
that merely has as many outputs. The differences past them are then reached: a key padding mask of
the other polarity, and a value projection reading the input plus the positions, named by the add
the reference applies only for q and k."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.diagnose import diagnose_modules
from helpers import findings_text

DIM, HEADS, TOKENS = 16, 2, 6


class Projected(nn.Module):
    """The reference: q and k project ``x + pos``, v projects ``x``; a key padding mask; an MLP as wide as q and k."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(DIM, DIM) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        heads = (lambda t: t.unflatten(-1, (HEADS, -1)).transpose(1, 2))
        qk = x + pos
        o = F.scaled_dot_product_attention(heads(self.q_proj(qk)), heads(self.k_proj(qk)), heads(self.v_proj(x)),
                                           attn_mask=keep[:, None, None, :])
        x = x + self.o_proj(o.transpose(1, 2).flatten(2))
        return x + self.fc2(F.relu(self.fc1(x)))


class Sliced(nn.Module):
    """The port: q, k and v taken as row slices of one weight; ``bug``: "polarity" (the keep mask
    inverted) or "value" (v projects ``x + pos`` too)."""

    def __init__(self, bug: str | None = None) -> None:
        super().__init__()
        self.in_proj_weight, self.in_proj_bias = nn.Parameter(torch.zeros(3 * DIM, DIM)), nn.Parameter(torch.zeros(3 * DIM))
        self.out_proj = nn.Linear(DIM, DIM)
        self.linear1, self.linear2 = nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM)
        self.bug = bug

    def forward(self, x: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        w, b, d = self.in_proj_weight, self.in_proj_bias, DIM
        qk = x + pos
        q, k = F.linear(qk, w[:d], b[:d]), F.linear(qk, w[d:2 * d], b[d:2 * d])
        v = F.linear(qk if self.bug == "value" else x, w[2 * d:], b[2 * d:])
        split = (lambda t: t.unflatten(-1, (HEADS, -1)))
        s = torch.einsum("bqhd,bkhd->bhqk", split(q), split(k)) / (d // HEADS) ** 0.5
        keep = ~keep if self.bug == "polarity" else keep
        s = s.masked_fill(~keep[:, None, None, :], float("-inf"))
        x = x + self.out_proj(torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), split(v)).flatten(2))
        return x + self.linear2(F.relu(self.linear1(x)))


def _mapped(ref: Projected) -> dict[str, torch.Tensor]:
    """What a weight map puts into each of the port's parameters."""
    proj = (ref.q_proj, ref.k_proj, ref.v_proj)
    return {"in_proj_weight": torch.cat([p.weight for p in proj]), "in_proj_bias": torch.cat([p.bias for p in proj]),
            **{f"{mine}.{key}": getattr(theirs, key) for mine, theirs in (("out_proj", ref.o_proj),
                                                                           ("linear1", ref.fc1), ("linear2", ref.fc2))
               for key in ("weight", "bias")}}


def _diagnosed(bug: str) -> list[dict]:
    torch.manual_seed(0)
    ref, cand = Projected().double().eval(), Sliced(bug).double().eval()
    mapped = {k: v.detach() for k, v in _mapped(ref).items()}
    cand.load_state_dict(mapped, strict=False)
    g = torch.Generator().manual_seed(1)
    x, pos = (torch.randn(2, TOKENS, DIM, dtype=torch.float64, generator=g) for _ in range(2))
    keep = torch.ones(2, TOKENS, dtype=torch.bool)
    keep[1, 4:] = False  # the second sample padded
    return diagnose_modules(cand, ref, (x, pos, keep), {}, expected=mapped.get)


@pytest.fixture(scope="module")
def polarity() -> list[dict]:
    return _diagnosed("polarity")


def test_inverted_padding_mask_behind_sliced_projections_reads_as_its_polarity(polarity):
    first = polarity[0]["text"] if polarity else ""
    assert "attn_mask" in first and "polarity looks inverted" in first, \
        f"the inverted mask is not the finding:\n{findings_text(polarity)}"


def test_sliced_q_and_k_are_not_compared_with_a_fused_reference_pair(polarity):
    text = findings_text(polarity)
    assert "linear + linear" not in text, f"the reference's q and k are joined against the MLP's linear:\n{text}"


def test_value_projection_reading_the_position_sum_names_that_add():
    findings = _diagnosed("value")
    first = findings[0]["text"] if findings else ""
    assert "reads what the reference's add gives" in first and "reads the module's input" in first, \
        f"the value projection's input is not said to be the reference's q/k input:\n{findings_text(findings)}"
