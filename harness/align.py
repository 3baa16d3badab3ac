"""Pair candidate records with reference records.

Three passes, each only over what the previous ones left:

1. ``name``: identical qualified name and call index.
2. ``rename``: the candidate name rewritten by the pair's ``(regex, replacement)`` rules, applied
   in order, each to the result of the previous one.
3. ``structure``: between consecutive matched anchors, a sequence alignment (weighted longest
   common subsequence) of the leftover calls on both sides by execution order, where two calls
   may only pair when their primary outputs have the same shape. It tolerates modules present on
   one side only (an extra ``Identity``, a fused qkv against split q/k/v): those stay unmatched.

Nothing is dropped silently: whatever no pass paired is returned as unmatched, per side; calls
that returned their input tensor itself (an ``Identity``, a ``Dropout`` in eval mode) are
returned apart as pass-through, since there is nothing to compare in them.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from typing import Literal, Sequence

from harness.trace import ROOT, Record

__all__ = ["Match", "Alignment", "align", "apply_rename", "check_rename"]

How = Literal["name", "rename", "structure"]


@dataclass(frozen=True)
class Match:
    candidate: Record
    reference: Record
    how: How


@dataclass(frozen=True)
class Alignment:
    matches: list[Match]  # in candidate execution (completion) order
    unmatched_candidate: list[Record]
    unmatched_reference: list[Record]
    passthrough_candidate: list[Record]  # unmatched calls that returned their input unchanged
    passthrough_reference: list[Record]


def check_rename(rules: Sequence[tuple[str, str]]) -> None:
    """Raise a TypeError/ValueError naming the first malformed ``(regex, replacement)`` rule."""
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise TypeError(f"rename must be a sequence of (regex, replacement) pairs, got {type(rules).__name__}")
    for rule in rules:
        if not (isinstance(rule, tuple) and len(rule) == 2 and all(isinstance(s, str) for s in rule)):
            raise TypeError(f"rename rules are (regex, replacement) string pairs, got {rule!r}")
        try:
            re.sub(rule[0], rule[1], "")
        except re.error as exc:
            raise ValueError(f"rename rule {rule!r} is not a valid regex/replacement: {exc}") from None


def apply_rename(name: str, rules: Sequence[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


def align(
    candidate: Sequence[Record],
    reference: Sequence[Record],
    rename: Sequence[tuple[str, str]] = (),
    *,
    structural: bool = True,
) -> Alignment:
    """Match candidate records to reference records (see module docstring)."""
    check_rename(rename)
    ref_by_key = {r.key: i for i, r in enumerate(reference)}
    paired: dict[int, tuple[int, How]] = {}  # candidate index -> (reference index, how)
    taken: set[int] = set()

    def try_pair(ci: int, key: str, how: How) -> bool:
        ri = ref_by_key.get(key)
        if ri is None or ri in taken:
            return False
        paired[ci] = (ri, how)
        taken.add(ri)
        return True

    for ci, rec in enumerate(candidate):
        try_pair(ci, rec.key, "name")
    if rename:
        for ci, rec in enumerate(candidate):
            if ci not in paired and rec.name != ROOT:
                try_pair(ci, f"{apply_rename(rec.name, rename)}#{rec.call}", "rename")
    if structural:
        _structural(candidate, reference, paired, taken)

    matches = [Match(candidate[ci], reference[ri], how) for ci, (ri, how) in sorted(paired.items())]
    left_c = [r for i, r in enumerate(candidate) if i not in paired]
    left_r = [r for i, r in enumerate(reference) if i not in taken]
    return Alignment(
        matches=matches,
        unmatched_candidate=[r for r in left_c if not r.passthrough],
        unmatched_reference=[r for r in left_r if not r.passthrough],
        passthrough_candidate=[r for r in left_c if r.passthrough],
        passthrough_reference=[r for r in left_r if r.passthrough],
    )


def _structural(
    candidate: Sequence[Record], reference: Sequence[Record], paired: dict, taken: set
) -> None:
    """Fill ``paired`` with shape-compatible matches between anchors (in place)."""
    anchors = _monotone_anchors(sorted((ci, ri) for ci, (ri, _) in paired.items()))
    bounds = [(-1, -1), *anchors, (len(candidate), len(reference))]
    for (c0, r0), (c1, r1) in zip(bounds, bounds[1:]):
        # pass-through calls compute nothing: pairing one would only invent a spurious row
        cs = [i for i in range(c0 + 1, c1) if i not in paired and not candidate[i].passthrough]
        rs = [j for j in range(r0 + 1, r1) if j not in taken and not reference[j].passthrough]
        if not cs or not rs:
            continue
        for ci, ri in _lcs([candidate[i] for i in cs], [reference[j] for j in rs]):
            paired[cs[ci]] = (rs[ri], "structure")
            taken.add(rs[ri])


def _monotone_anchors(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Longest subsequence of (candidate, reference) index pairs increasing on both sides."""
    if not pairs:
        return []
    tails: list[int] = []  # reference index ending the best chain of each length
    tail_at: list[int] = []
    parent: list[int] = []
    for k, (_, ri) in enumerate(pairs):
        pos = bisect_left(tails, ri)
        if pos == len(tails):
            tails.append(ri)
            tail_at.append(k)
        else:
            tails[pos] = ri
            tail_at[pos] = k
        parent.append(tail_at[pos - 1] if pos else -1)
    chain, k = [], tail_at[-1]
    while k != -1:
        chain.append(pairs[k])
        k = parent[k]
    return chain[::-1]


def _score(c: Record, r: Record) -> float:
    """0 when the calls cannot pair; otherwise 1, plus 0.5 when their last names share a word."""
    if c.shape is None or c.shape != r.shape:
        return 0.0
    words_c = set(c.name.rsplit(".", 1)[-1].split("_"))
    words_r = set(r.name.rsplit(".", 1)[-1].split("_"))
    return 1.0 + (0.5 if words_c & words_r else 0.0)


def _lcs(cs: list[Record], rs: list[Record]) -> list[tuple[int, int]]:
    """Weighted LCS over two call streams, pairing only shape-compatible records.

    Among equally good alignments the one that pairs the *last* calls of a gap is kept: what one
    side has in excess (a fused qkv before an output projection, an extra stem conv) tends to
    open a gap, while the calls that close it lead into the next anchor on both sides.
    """
    n, m = len(cs), len(rs)
    # best[i][j]: best score of cs[:i] against rs[:j]; backtracking from the end favours late pairs
    best = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        row, above = best[i], best[i - 1]
        for j in range(1, m + 1):
            s = _score(cs[i - 1], rs[j - 1])
            row[j] = max(above[j], row[j - 1], above[j - 1] + s if s else 0.0)
    out, i, j = [], n, m
    while i > 0 and j > 0:
        s = _score(cs[i - 1], rs[j - 1])
        if s and best[i][j] == best[i - 1][j - 1] + s:
            out.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif best[i][j] == best[i - 1][j]:
            i -= 1
        else:
            j -= 1
    return out[::-1]
