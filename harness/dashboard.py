"""``dashboard.html``: the run history (``history.jsonl``) as one page.

Each history entry is one reporting run (or one merge of shards) with, per result, its status,
output relative L2 error and time. The page shows

- the runs, newest first, each marked *partial* when it did not run the whole suite (a -k or node
  selection, --lf, a single shard, a run stopped early) and with the reason;
- regressions: for each (pair, dtype, test), every run whose result is newly failing, or whose
  output error grew more than ``harness.runs.GROWTH`` times while still passing, against the
  previous run that had that result (``harness.runs.regressions``);
- per (pair, dtype, test): output error and time over the runs as small inline SVG plots on a log
  scale (filled dot: pass, red: fail, brown: error; hollow: from a partial run; red ring: regression).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from harness.pages import COLORS, _page, esc, fmt_num, fmt_seconds, pair_page_name
from harness.files import atomic_write_text
from harness.runs import regressions

__all__ = ["series", "dashboard_html", "write_dashboard"]

SeriesKey = tuple[str, str, str]


def series(history: list[dict[str, Any]]) -> dict[SeriesKey, list[tuple[int, dict[str, Any], list[str]]]]:
    """(pair, dtype, test) -> [(run index, history row, regression reasons)], oldest first."""
    out: dict[SeriesKey, list[tuple[int, dict[str, Any], list[str]]]] = {}
    for index, entry in enumerate(history):
        for row in entry.get("results") or []:
            k = (str(row.get("pair") or ""), str(row.get("dtype") or ""), str(row.get("test") or ""))
            points = out.setdefault(k, [])
            why = regressions(points[-1][1] if points else None, row)
            points.append((index, row, why))
    return out


def _spark(points: list[tuple[int, dict[str, Any], list[str]]], runs: list[dict[str, Any]], field: str,
           *, width: int = 290, height: int = 50) -> str:
    """A log-scale plot of ``field`` over the run indices, one dot per run that had the result."""
    values = [(i, row.get(field), row, why) for i, row, why in points]
    numbers = [float(v) for _, v, _, _ in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    positive = [v for v in numbers if v > 0]
    lo, hi = (math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))) if positive else (-1, 0)
    has_zero = any(v == 0 for v in numbers)
    lo -= 1 if has_zero else 0  # exact zeros get the bottom decade to themselves
    hi = max(hi, lo + 1)
    left, n = 44, max(len(runs) - 1, 1)

    def x(i: int) -> float:
        return left + 6 + (width - left - 12) * i / n

    def y(v: Any) -> float:
        if not isinstance(v, (int, float)) or v <= 0:
            return height - 6  # zero, or no number (an error): the bottom edge
        return 6 + (height - 12) * (hi - math.log10(v)) / (hi - lo)

    bottom = "0" if has_zero else (f"1e{lo}" if positive else "")
    out = [f'<svg class="spark {field}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'xmlns="http://www.w3.org/2000/svg" font-size="10" font-family="sans-serif">'
           f'<rect x="{left}" width="{width - left}" height="{height}" fill="#fafafa"/>'
           f'<text x="{left - 4}" y="10" text-anchor="end" fill="#777">{"1e" + str(hi) if positive else ""}</text>'
           f'<text x="{left - 4}" y="{height - 2}" text-anchor="end" fill="#777">{bottom}</text>']
    line = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v, _, _ in values)
    out.append(f'<polyline points="{line}" fill="none" stroke="#9e9e9e"/>')
    for i, v, row, why in values:
        color = COLORS.get(row.get("status", "pass"), "#555")
        partial = bool(runs[i].get("partial"))
        tip = f'{runs[i].get("time")}: {fmt_seconds(v) if field == "seconds" else fmt_num(v)} ({row.get("status")})'
        tip += (" partial run" if partial else "") + (("; " + "; ".join(why)) if why else "")
        out.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="{"#fff" if partial else color}" '
                   f'stroke="{color}" stroke-width="1.5"><title>{esc(tip)}</title></circle>')
        if why and field == "rel_l2":
            out.append(f'<circle class="regression" cx="{x(i):.1f}" cy="{y(v):.1f}" r="6.5" fill="none" '
                       f'stroke="#c62828" stroke-width="1.5"/>')
    out.append("</svg>")
    return "".join(out)


def _pair_cell(k: SeriesKey, pages: set[str] | None) -> str:
    """Pair name (linked to its page when the report has one), dtype, and the test id."""
    name = pair_page_name(k[0], k[1])
    label = f"<b>{esc(k[0])}</b>"
    if pages is None or name in pages:
        label = f'<a href="pairs/{esc(name)}">{label}</a>'
    return f'{label} [{esc(k[1])}]<br><span class="muted mono">{esc(k[2])}</span>'


def dashboard_html(history: list[dict[str, Any]], pages: set[str] | None = None) -> str:
    """The page; ``pages``: the pair pages that exist (links to others are left out), None for all."""
    runs = history
    all_series = series(history)
    parts = ["<p><a href=\"index.html\">← latest report</a></p><h1>Parity dashboard</h1>",
             f"<p>{len(runs)} runs from {esc(str(runs[0].get('time')))} to {esc(str(runs[-1].get('time')))}; "
             f"{len(all_series)} results tracked. Partial runs (not the whole suite) are marked; their points are hollow.</p>"]
    flagged = [(k, i, why) for k, points in all_series.items() for i, _, why in points if why]
    latest = len(runs) - 1
    parts.append(f"<h2>Regressions ({len(flagged)})</h2>")
    if flagged:
        rows = "".join(
            f'<tr{" class=latest" if i == latest else ""}><td>{esc(str(runs[i].get("time")))}</td>'
            f'<td>{_pair_cell(k, pages)}</td><td>{esc("; ".join(why))}</td>'
            f'<td><code>{esc(str(runs[i].get("commit") or "–"))}</code></td></tr>'
            for k, i, why in sorted(flagged, key=lambda f: (-f[1], f[0])))
        parts.append("<table><thead><tr><th>run</th><th>pair [dtype] / test</th><th>regression</th><th>commit</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table>")
    else:
        parts.append("<p>None: no result became a failure or grew its error more than tenfold.</p>")
    parts.append("<h2>Runs</h2><table><thead><tr><th>time (UTC)</th><th>commit</th><th>selection</th>"
                 '<th class="num">pass</th><th class="num">fail</th><th class="num">error</th><th>coverage</th></tr></thead><tbody>')
    for run in reversed(runs):
        cover = ('<span class="badge error">partial</span> ' + esc(", ".join(run.get("why_partial") or []))
                 if run.get("partial") else "whole suite")
        fails = run.get("failures", run.get("total", 0) - run.get("passed", 0))
        parts.append(f'<tr><td>{esc(str(run.get("time")))}</td><td><code>{esc(str(run.get("commit") or "–"))}</code></td>'
                     f'<td><code>{esc(str(run.get("selection") or "–"))}</code></td>'
                     f'<td class="num">{run.get("passed", "–")}</td><td class="num">{fails}</td>'
                     f'<td class="num">{run.get("errors", 0)}</td><td>{cover}</td></tr>')
    parts.append("</tbody></table>")
    parts.append('<h2>Per pair over runs</h2><table><thead><tr><th>pair [dtype] / test</th><th>latest</th>'
                 '<th>output rel. L2 over runs</th><th class="num">latest error</th><th>time over runs</th>'
                 '<th class="num">latest time</th></tr></thead><tbody>')
    for k, points in sorted(all_series.items()):
        _, row, why = points[-1]
        st = row.get("status", "pass")
        parts.append(
            f'<tr><td>{_pair_cell(k, pages)}</td>'
            f'<td><span class="badge {esc(st)}">{esc(st.upper())}</span>'
            + ("<br><b style='color:#c62828'>regression</b>" if why else "") + "</td>"
            f'<td>{_spark(points, runs, "rel_l2")}</td><td class="num">{fmt_num(row.get("rel_l2"))}</td>'
            f'<td>{_spark(points, runs, "seconds")}</td><td class="num">{fmt_seconds(row.get("seconds"))}</td></tr>')
    parts.append("</tbody></table>")
    return _page("Parity dashboard", "\n".join(parts))


def write_dashboard(path: str | os.PathLike, history: list[dict[str, Any]], pages: set[str] | None = None) -> Path:
    if not history:
        raise ValueError("the dashboard needs at least one history entry (history.jsonl is empty)")
    return atomic_write_text(path, dashboard_html(history, pages))
