"""Error metrics between a candidate tensor and its reference, and the tolerance policy.

All metrics are computed in float64 whatever the inputs' dtype, so the measurement never adds
rounding of its own. A comparison passes when

    max_abs <= atol + rtol * max(|reference|)

i.e. an absolute floor plus an error relative to the tensor's own scale: activations of a deep
net with random weights reach magnitudes in the hundreds, where a fixed absolute bound would be
meaningless. Both sides must also agree on where values are NaN/Inf: ``nonfinite_mismatch`` counts
the positions where they do not, and any such position makes the errors infinite and the cosine NaN.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import torch

from harness.checks import check_choice, check_type, check_value, type_error

__all__ = ["Tolerance", "Metrics", "DEFAULT_TOLERANCES", "measure", "measure_summaries", "tolerance_for",
           "check_tolerances", "mismatch_stats"]


@dataclass(frozen=True)
class Tolerance:
    """``max_abs <= atol + rtol * max|reference|`` passes."""

    atol: float
    rtol: float

    def __post_init__(self) -> None:
        for field_name in ("atol", "rtol"):
            value = getattr(self, field_name)
            check_type(f"Tolerance.{field_name}", value, (int, float), what="a number >= 0")
            check_value(f"Tolerance.{field_name}", value, value >= 0, expected="a number >= 0")  # NaN fails too

    def bound(self, reference_absmax: float) -> float:
        return self.atol + self.rtol * reference_absmax


# float64 is tight enough to tell a bug from rounding: an eps change of 1e-6 in one LayerNorm
# moves outputs by ~1e-6 relative, a million times above float64 rounding through a deep net.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(atol=1e-10, rtol=1e-9),
    "float32": Tolerance(atol=1e-5, rtol=1e-4),
    "bfloat16": Tolerance(atol=1e-2, rtol=5e-2),
    "float16": Tolerance(atol=1e-3, rtol=1e-2),
}


def percent(share: float, digits: int = 1) -> str:
    """``share`` as a percentage with ``digits`` decimals, and more where rounding would show a
    share short of 1 (or above 0) as 100% (0%): 99.96% of the elements fed is not all of them."""
    for more in range(digits, digits + 6):
        text = f"{share:.{more}%}"
        if not (0 < share < 1) or text not in (f"{1:.{more}%}", f"{0:.{more}%}"):
            return text
    return "<100%" if share > 0.5 else ">0%"


def dtype_name(dtype: torch.dtype | str) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DEFAULT_TOLERANCES:
        raise ValueError(f"no tolerance policy for dtype {name!r}; expected one of {sorted(DEFAULT_TOLERANCES)}")
    return name


def check_tolerances(
    overrides: Mapping[str, Tolerance] | None,
    module_overrides: Sequence[tuple[str, str | None, Tolerance]] = (),
) -> None:
    """Raise a ValueError/TypeError naming the first malformed override (nothing passes unchecked)."""
    known = sorted(DEFAULT_TOLERANCES)
    if overrides is not None:
        check_type("tolerances", overrides, Mapping, what="a dict of dtype name -> harness.Tolerance",
                   fix="e.g. {'float32': Tolerance(atol=1e-5, rtol=1e-4)}")
    for key, tol in (overrides or {}).items():
        check_choice("tolerances key", key, known)
        check_type(f"tolerances[{key!r}]", tol, Tolerance, what="a harness.Tolerance(atol=..., rtol=...)")
    for rule in module_overrides:
        if not (isinstance(rule, tuple) and len(rule) == 3):
            raise type_error("a module tolerance rule", rule, "a tuple (regex, dtype name or None, Tolerance)")
        pattern, dtype, tol = rule
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ValueError(f"module tolerance rule {rule!r}: {pattern!r} is not a valid regex ({exc})") from None
        check_choice(f"the dtype of module tolerance rule {rule!r}", dtype, [*known, None])
        check_type(f"the tolerance of module tolerance rule {rule!r}", tol, Tolerance, what="a harness.Tolerance")


def tolerance_for(
    dtype: torch.dtype | str,
    *,
    module: str | None = None,
    overrides: Mapping[str, Tolerance] | None = None,
    module_overrides: Sequence[tuple[str, str | None, Tolerance]] = (),
) -> Tolerance:
    """The tolerance for ``dtype``: default, then pair override, then the last matching module rule."""
    name = dtype_name(dtype)
    tol = (overrides or {}).get(name, DEFAULT_TOLERANCES[name])
    if module is not None:
        for pattern, rule_dtype, rule_tol in module_overrides:
            if (rule_dtype is None or rule_dtype == name) and re.search(pattern, module):
                tol = rule_tol
    return tol


@dataclass(frozen=True)
class Metrics:
    """Error of ``candidate`` against ``reference``."""

    max_abs: float
    max_rel: float
    rel_l2: float
    cosine: float
    ref_absmax: float
    nonfinite_mismatch: int = 0
    shape_mismatch: bool = False
    # failing rows (see mismatch_stats): elements beyond the bound, the worst element, the bound
    mismatched: int | None = None
    mismatched_share: float | None = None
    worst_index: tuple[int, ...] | None = None
    allowed: float | None = None
    # final outputs: the tolerance that would have passed (rtol at the same atol, atol at rtol 0)
    passing_rtol: float | None = None
    passing_atol: float | None = None

    def passes(self, tol: Tolerance) -> bool:
        if self.shape_mismatch or self.nonfinite_mismatch:
            return False
        return self.max_abs <= tol.bound(self.ref_absmax)

    def to_dict(self) -> dict[str, float]:
        return {k: _json_float(v) for k, v in asdict(self).items()}


def _json_float(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def measure(candidate: torch.Tensor, reference: torch.Tensor) -> Metrics:
    """Metrics of ``candidate`` against ``reference`` (same shape, any dtypes, any devices)."""
    check_type("measure()'s candidate", candidate, torch.Tensor)
    check_type("measure()'s reference", reference, torch.Tensor)
    if candidate.shape != reference.shape:
        nan = float("nan")
        return Metrics(nan, nan, nan, nan, nan, shape_mismatch=True)
    if candidate.numel() == 0:
        return Metrics(0.0, 0.0, 0.0, 1.0, 0.0)
    identical = _identical(candidate, reference)
    if identical is not None:
        return identical
    a = candidate.detach().to("cpu", torch.float64)
    b = reference.detach().to("cpu", torch.float64)
    finite_a, finite_b = torch.isfinite(a), torch.isfinite(b)
    # Non-finite values must sit at the same places with the same values (inf == inf, nan ~ nan).
    same_nonfinite = (~finite_a & ~finite_b) & ((a == b) | (torch.isnan(a) & torch.isnan(b)))
    nonfinite_mismatch = int(((~finite_a | ~finite_b) & ~same_nonfinite).sum())
    both = finite_a & finite_b
    a, b = torch.where(both, a, 0.0), torch.where(both, b, 0.0)
    diff = (a - b).abs()
    ref_absmax = float(b.abs().max())
    max_abs = float(diff.max())
    # Elementwise relative error, with the denominator floored at 1e-3 of the tensor's scale so
    # that reference values crossing zero do not turn rounding into an "infinite" error.
    floor = max(ref_absmax * 1e-3, torch.finfo(torch.float64).tiny)
    max_rel = float((diff / b.abs().clamp_min(floor)).max())
    ref_norm = float(b.norm())
    diff_norm = float(diff.norm())
    rel_l2 = diff_norm / ref_norm if ref_norm > 0 else (0.0 if diff_norm == 0 else math.inf)
    na, nb = float(a.norm()), ref_norm
    cosine = float((a * b).sum()) / (na * nb) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    if nonfinite_mismatch:  # NaN/Inf against a number: an unbounded error, never a perfect score
        max_abs, max_rel, rel_l2, cosine = math.inf, math.inf, math.inf, math.nan
    return Metrics(max_abs, max_rel, rel_l2, cosine, ref_absmax, nonfinite_mismatch)


def _identical(candidate: torch.Tensor, reference: torch.Tensor) -> Metrics | None:
    """The metrics of two bitwise equal, finite tensors (a trace keeps agreeing layers as one
    copy, so at float64 this is most rows), from one pass over the reference; None otherwise."""
    if candidate is not reference and (candidate.dtype != reference.dtype or candidate.device != reference.device
                                       or not torch.equal(candidate, reference)):
        return None
    values = reference.detach()
    if values.is_floating_point():  # the extremes, without a temporary the size of the tensor
        low, high = (float(v) for v in torch.aminmax(values))
    else:
        low, high = 0.0, float((values if values.is_complex() else values.double()).abs().max())
    if not (math.isfinite(low) and math.isfinite(high)):
        return None  # NaN or Inf somewhere: the general path checks they sit at the same places
    return Metrics(0.0, 0.0, 0.0, 1.0, max(-low, high))


def mismatch_stats(candidate: torch.Tensor, reference: torch.Tensor, tol: Tolerance) -> dict:
    """What ``torch.testing.assert_close`` tells: elements beyond the bound (count, share), the
    worst element's index and the bound allowed, plus the loosest tolerance needed to pass
    (``passing_rtol`` at ``tol.atol``; ``passing_atol`` with rtol 0). Same shapes expected."""
    a = candidate.detach().to("cpu", torch.float64)
    b = reference.detach().to("cpu", torch.float64)
    diff = (a - b).abs()
    diff = torch.where(torch.isnan(a) & torch.isnan(b), 0.0, diff)
    diff = torch.where(torch.isnan(diff), math.inf, diff)
    ref_absmax = float(torch.where(torch.isfinite(b), b, 0.0).abs().max()) if b.numel() else 0.0
    allowed = tol.bound(ref_absmax)
    if diff.numel() == 0:
        return {"mismatched": 0, "mismatched_share": 0.0, "worst_index": (), "allowed": allowed}
    flat = int(diff.argmax())
    worst = float(diff.reshape(-1)[flat])
    bad = int((diff > allowed).sum())
    return {
        "mismatched": bad, "mismatched_share": bad / diff.numel(),
        "worst_index": tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape)),
        "allowed": allowed,
        "passing_rtol": max(worst - tol.atol, 0.0) / ref_absmax if ref_absmax > 0 else math.inf,
        "passing_atol": worst,
    }


def measure_summaries(candidate, reference) -> Metrics:
    """Metrics from two :class:`harness.trace.TensorSummary` (summary-mode traces).

    ``max_abs`` is the largest of |d mean|, |d std| and |d absmax|: each is at most the true
    max abs error (up to a factor sqrt(n/(n-1)) for the std), so a failing summary row is a real
    divergence, while a passing one may hide errors that leave the statistics unchanged.
    ``rel_l2`` and ``cosine`` cannot be known and are NaN.
    """
    nan = float("nan")
    if tuple(candidate.shape) != tuple(reference.shape):
        return Metrics(nan, nan, nan, nan, nan, shape_mismatch=True)
    deltas = [abs(candidate.mean - reference.mean), abs(candidate.std - reference.std),
              abs(candidate.absmax - reference.absmax)]
    finite = [d for d in deltas if d == d]
    max_abs = max(finite) if finite else 0.0
    scale = reference.absmax if reference.absmax == reference.absmax else 0.0
    mismatch = int(candidate.nonfinite != reference.nonfinite)
    if mismatch:
        return Metrics(math.inf, math.inf, nan, nan, scale, mismatch)
    return Metrics(max_abs, max_abs / scale if scale > 0 else 0.0, nan, nan, scale, mismatch)
