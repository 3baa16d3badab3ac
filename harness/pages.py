"""HTML pages from a report document: ``index.html`` and one page per pair and dtype.

Pages are self-contained files (inline CSS and SVG, no script, no network) that open from disk:

- ``index.html``: counts, the runs that produced the results, then failures and errors grouped by
  culprit (or by exception), then the passing comparisons; every row links to its pair page.
- ``pairs/<pair>-<dtype>.html``: per result the verdict, the diagnosis when the JSON has one, the
  error-vs-depth plot (relative L2 of every aligned call in execution order on a log scale, the
  tolerance, the first divergence and the culprit marked), the per-layer table with a status
  legend, unmatched and pass-through calls, the reproducing command and the environment.

Numbers are written for people: three significant digits, a cosine as its distance from 1.
"""

from __future__ import annotations

import html
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

from harness.files import atomic_write_text
from harness.runs import STATUS_LEGEND, key, status

__all__ = ["render", "write_index", "write_pair_pages", "pair_page_name", "fmt_num", "fmt_cosine",
           "fmt_seconds", "STATUS_LEGEND", "error_plot"]

esc = html.escape

COLORS = {"ok": "#2e7d32", "introduced": "#c62828", "contains": "#ef6c00", "propagated": "#8e24aa",
          "tentative": "#1565c0", "pass": "#2e7d32", "fail": "#c62828", "error": "#6d4c41"}

CSS = """
*{box-sizing:border-box} body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d1d1f}
main{max-width:1360px;margin:0 auto;padding:20px 24px}
h1{font-size:22px;margin:0 0 6px} h2{font-size:17px;margin:26px 0 8px} h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;width:100%;margin:6px 0 14px}
td,th{border-bottom:1px solid #e3e3e3;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f7;font-weight:600;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code,.mono{font:12.5px ui-monospace,SFMono-Regular,Menlo,monospace;overflow-wrap:anywhere}
.badge{display:inline-block;border-radius:4px;padding:0 7px;color:#fff;font-weight:600;font-size:12.5px}
.badge.pass{background:#2e7d32} .badge.fail{background:#c62828} .badge.error{background:#6d4c41}
tr.fail td:first-child{box-shadow:inset 3px 0 #c62828} tr.error td:first-child{box-shadow:inset 3px 0 #6d4c41}
.counts span{margin-right:14px;font-size:15px} .muted{color:#666;font-size:12.5px}
.group{border-left:4px solid #c62828;padding:2px 0 2px 12px;margin:14px 0}
.group.err{border-left-color:#6d4c41}
.st{font-weight:600} .note{background:#fff8e1;border-left:4px solid #f9a825;padding:6px 10px;margin:6px 0}
.diag{background:#fdecea;border-left:4px solid #c62828;padding:6px 10px;margin:6px 0}
pre{background:#f5f5f7;padding:8px 10px;overflow-x:auto;font-size:12.5px;white-space:pre-wrap;overflow-wrap:anywhere}
a{color:#0b57d0;text-decoration:none} a:hover{text-decoration:underline}
dl.legend{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:6px 0 12px}
dl.legend dt{font-weight:600} dl.legend dd{margin:0}
.plot{width:100%;max-width:1300px;height:auto;border:1px solid #e3e3e3}
"""


# -- numbers -------------------------------------------------------------------------------------
def _float(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        return float(v)  # JSON writes non-finite values as strings: "nan", "inf"
    except (TypeError, ValueError):
        return None


def fmt_num(v: Any) -> str:
    """3 significant digits; plain between 1e-3 and 1e4, else mantissa e exponent (3.21e-7)."""
    f = _float(v)
    if f is None:
        return "–" if v is None else esc(str(v))
    if math.isnan(f) or math.isinf(f):
        return str(f)
    if f == 0:
        return "0"
    if 1e-3 <= abs(f) < 1e4:
        return f"{f:.3g}"
    mantissa, exponent = f"{f:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def fmt_cosine(v: Any) -> str:
    """A cosine near 1 as ``1 − d`` (1 − 2.2e-16); rounding above 1 is shown as 1, never 1.0000000000000002."""
    f = _float(v)
    if f is None or math.isnan(f):
        return "nan" if f is not None else "–"
    distance = 1.0 - f
    if distance <= 0:
        return "1"
    if distance < 1e-3:
        return f"1 − {fmt_num(distance)}"
    return f"{f:.4f}"


def fmt_seconds(v: Any) -> str:
    f = _float(v)
    if f is None:
        return "–"
    if f < 60:
        return f"{f:.2f} s" if f < 10 else f"{f:.1f} s"
    return f"{int(f // 60)} min {f % 60:.0f} s"


# -- names and links -----------------------------------------------------------------------------
def pair_page_name(pair: Any, dtype: Any) -> str:
    """``<pair>-<dtype>.html`` with characters outside [A-Za-z0-9_.-] replaced (safe on any disk)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{pair or 'comparison'}-{dtype or 'unknown'}")
    return f"{safe}.html"


def _verdict(result: dict[str, Any]) -> str:
    s = status(result)
    return f'<span class="badge {s}">{s.upper()}</span>'


def _run_label(run: dict[str, Any] | None) -> str:
    if not run:
        return "–"
    commit = run.get("commit") or "no commit"
    part = " · partial" if run.get("partial") else ""
    return f"{esc(str(run.get('time', '?')).replace('T', ' ').rstrip('Z'))} · <code>{esc(commit)}</code>{part}"


def _page(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><main>\n{body}\n</main></body></html>\n")


def _environment(env: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())
    extra = "; ".join(f"{k} {env[k]}" for k in ("device", "cuda", "threads", "platform") if env.get(k) is not None)
    return esc("; ".join(part for part in (versions, extra) if part))


# -- index ---------------------------------------------------------------------------------------
def _group_name(result: dict[str, Any]) -> tuple[str, str]:
    """(kind, label) a failure is grouped under: its culprit, or its exception for an error."""
    if status(result) == "error":
        error = result.get("error") or {}
        first = str(error.get("message", "")).strip().splitlines()[:1]
        return "error", f"{error.get('type', 'Exception')}: {first[0] if first else ''}".strip()
    return "culprit", str(result.get("culprit") or "(not localized)")


def _index_row(r: dict[str, Any]) -> str:
    o = r.get("output") or {}
    layers = r.get("layers") or []
    failing = sum(not layer.get("passed", True) for layer in layers)
    link = f'pairs/{esc(pair_page_name(r.get("pair"), r.get("dtype")))}'
    where = ""
    if status(r) == "error":
        where = f'<code>{esc((r.get("error") or {}).get("type", "error"))}</code>'
    elif status(r) == "fail":
        where = (f'<code>{esc(str(r.get("first_divergence") or "–"))}</code> → '
                 f'<code>{esc(str(r.get("culprit") or "(not localized)"))}</code>')
    return (
        f'<tr class="{status(r)}"><td><a href="{link}"><b>{esc(str(r.get("pair") or "(no pair)"))}</b></a>'
        f'<br><span class="muted mono">{esc(str(r.get("test") or ""))}</span></td>'
        f'<td>{esc(str(r.get("dtype") or "–"))}</td><td>{_verdict(r)}</td>'
        f'<td class="num">{fmt_num(o.get("rel_l2"))}</td><td class="num">{fmt_num(o.get("max_abs"))}</td>'
        f'<td class="num">{fmt_cosine(o.get("cosine"))}</td>'
        f'<td class="num">{len(layers)} ({failing})</td><td>{where}</td>'
        f'<td class="num">{fmt_seconds(r.get("seconds"))}</td>'
        f'<td class="muted">{_run_label(r.get("run"))}</td></tr>'
    )


INDEX_HEAD = ('<tr><th>pair / test</th><th>dtype</th><th>verdict</th><th class="num">output rel. L2</th>'
              '<th class="num">max abs</th><th class="num">cosine</th><th class="num">layers (failing)</th>'
              '<th>first divergence → culprit</th><th class="num">time</th><th>run</th></tr>')


def _table(rows: Iterable[dict[str, Any]]) -> str:
    return "<table><thead>" + INDEX_HEAD + "</thead><tbody>\n" + "\n".join(_index_row(r) for r in rows) + "\n</tbody></table>"


def index_html(doc: dict[str, Any], *, dashboard: bool = False) -> str:
    results = sorted(doc["results"], key=lambda r: (key(r)[1], key(r)[2], key(r)[0]))
    counts = {s: sum(status(r) == s for r in results) for s in ("pass", "fail", "error")}
    parts = ["<h1>Parity report</h1>",
             f'<p class="counts"><span><b>{counts["pass"]} of {len(results)} comparisons pass</b></span>'
             f'<span class="badge fail">{counts["fail"]} failing</span> '
             f'<span class="badge error">{counts["error"]} error{"s" * (counts["error"] != 1)}</span> '
             + ('<a href="dashboard.html">dashboard over runs →</a>' if dashboard else "") + "</p>"]
    runs = doc.get("runs") or []
    if runs:
        parts.append("<h2>Runs in this report</h2><table><thead><tr><th>time (UTC)</th><th>commit</th>"
                     "<th>selection</th><th class=\"num\">results kept</th><th>coverage</th></tr></thead><tbody>")
        for run in reversed(runs):
            kept = sum((r.get("run") or {}).get("id") == run.get("id") for r in results)
            cover = ("partial: " + esc(", ".join(run.get("why_partial") or []))) if run.get("partial") else "whole suite"
            parts.append(f'<tr><td>{esc(str(run.get("time")))}</td><td><code>{esc(str(run.get("commit") or "–"))}</code></td>'
                         f'<td><code>{esc(str(run.get("selection") or "(default)"))}</code></td>'
                         f'<td class="num">{kept}</td><td>{cover}</td></tr>')
        parts.append("</tbody></table>")
    bad = [r for r in results if status(r) != "pass"]
    if bad:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in bad:
            groups.setdefault(_group_name(r), []).append(r)
        parts.append(f"<h2>Failures and errors ({len(bad)}), grouped by culprit</h2>")
        for (kind, label), members in sorted(groups.items(), key=lambda g: (g[0][0] == "error", -len(g[1]), g[0][1])):
            pairs = sorted({str(m.get("pair")) for m in members})
            what = "raise" if kind == "error" else "culprit"
            parts.append(f'<div class="group{" err" if kind == "error" else ""}"><h3>{what}: <code>{esc(label)}</code> '
                         f'<span class="muted">— {len(members)} comparison{"s" * (len(members) != 1)}, '
                         f'pairs {esc(", ".join(pairs))}</span></h3>{_table(members)}</div>')
    good = [r for r in results if status(r) == "pass"]
    parts.append(f"<h2>Passing ({len(good)})</h2>" + (_table(good) if good else "<p>none</p>"))
    parts.append(f'<p class="muted">Environment of the latest run: {_environment(doc.get("environment") or {})}</p>')
    return _page("Parity report", "\n".join(parts))


def write_index(path: str | os.PathLike, doc: dict[str, Any], *, dashboard: bool = False) -> Path:
    return atomic_write_text(path, index_html(doc, dashboard=dashboard))


# -- the error-vs-depth plot ---------------------------------------------------------------------
def error_plot(result: dict[str, Any], *, width: int = 1200, height: int = 300) -> str:
    """Inline SVG: relative L2 per aligned call (log scale), rtol line, first divergence and culprit."""
    layers = result.get("layers") or []
    if not layers:
        return '<p class="muted">No aligned calls to plot.</p>'
    left, right, top, bottom = 70, 20, 16, 40
    w, h = width - left - right, height - top - bottom
    values = [_float(layer.get("rel_l2")) for layer in layers]
    rtol = _float((result.get("tolerance") or {}).get("rtol"))
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    logs = [math.log10(v) for v in finite] + ([math.log10(rtol)] if rtol else [])
    lo = math.floor(min(logs, default=-16)) - 2  # the bottom decade is left empty: exact zeros sit there
    hi = math.ceil(max(logs, default=0)) + (1 if logs else 0)
    hi = max(hi, lo + 2)

    def x(i: int) -> float:
        return left + (w * i / (len(layers) - 1) if len(layers) > 1 else w / 2)

    def y(v: float | None) -> float:
        if v is None or not math.isfinite(v):
            return top  # NaN/Inf: pinned to the top edge
        if v <= 0:
            return top + h  # exact agreement: the bottom edge
        return top + h * (hi - min(max(math.log10(v), lo), hi)) / (hi - lo)

    out = [f'<svg class="plot" role="img" aria-label="relative L2 error per aligned layer" '
           f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">',
           f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>']
    step = max(1, math.ceil((hi - lo) / 8))
    for e in range(lo, hi + 1, step):
        yy = top + h * (hi - e) / (hi - lo)
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e6e6e6"/>'
                   f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{"1e" + str(e) if e > lo else "0"}</text>')
    out.append(f'<text x="{left + w / 2}" y="{height - 6}" text-anchor="middle">aligned call, in execution order '
               f'(0 … {len(layers) - 1})</text>')
    out.append(f'<text transform="translate(14 {top + h / 2}) rotate(-90)" text-anchor="middle">relative L2 error</text>')
    if rtol:
        yy = y(rtol)
        out.append(f'<line class="tolerance" x1="{left}" x2="{left + w}" y1="{yy:.1f}" y2="{yy:.1f}" '
                   f'stroke="#f9a825" stroke-width="1.5" stroke-dasharray="6 4"/>'
                   f'<text x="{left + w - 4}" y="{yy - 4:.1f}" text-anchor="end" fill="#b07d00">tolerance rtol {fmt_num(rtol)}</text>')
    points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
    out.append(f'<polyline points="{points}" fill="none" stroke="#9e9e9e" stroke-width="1"/>')
    first, culprit = result.get("first_divergence"), result.get("culprit")
    first_at = next((i for i, layer in enumerate(layers) if not layer.get("passed", True)
                     and layer.get("candidate") == first), None)
    culprit_at = next((i for i, layer in enumerate(layers) if layer.get("candidate") == culprit
                       and layer.get("status") == "introduced"), None)
    for i, (layer, v) in enumerate(zip(layers, values)):
        st = layer.get("status") or ("ok" if layer.get("passed", True) else "propagated")
        name = f'{layer.get("candidate")}#{layer.get("call", 0)}'
        out.append(f'<circle class="layer {esc(st)}" cx="{x(i):.1f}" cy="{y(v):.1f}" r="{2.5 if st == "ok" else 3.5}" '
                   f'fill="{COLORS.get(st, "#555")}"><title>{esc(name)}: rel. L2 {fmt_num(v)} ({esc(st)})</title></circle>')
    if first_at is not None:
        xx = x(first_at)
        out.append(f'<line class="first-divergence" x1="{xx:.1f}" x2="{xx:.1f}" y1="{top}" y2="{top + h}" '
                   f'stroke="#ef6c00" stroke-dasharray="3 3"/>'
                   f'<text x="{min(xx + 4, left + w - 4):.1f}" y="{top + 12}" fill="#ef6c00" '
                   f'text-anchor="{"start" if xx < left + w * 0.7 else "end"}">first divergence: {esc(str(first))}</text>')
    if culprit_at is not None:
        xx, yy = x(culprit_at), y(values[culprit_at])
        out.append(f'<circle class="culprit" cx="{xx:.1f}" cy="{yy:.1f}" r="8" fill="none" stroke="#c62828" stroke-width="2"/>'
                   f'<text x="{min(xx + 10, left + w - 4):.1f}" y="{min(yy + 22, top + h - 4):.1f}" fill="#c62828" '
                   f'text-anchor="{"start" if xx < left + w * 0.7 else "end"}">culprit: {esc(str(culprit))}</text>')
    out.append("</svg>")
    return "".join(out)


# -- pair pages ----------------------------------------------------------------------------------
def _legend() -> str:
    items = "".join(f'<dt style="color:{COLORS.get(k, "#333")}">{esc(k)}</dt><dd>{esc(v)}</dd>'
                    for k, v in STATUS_LEGEND.items())
    return f'<dl class="legend">{items}</dl>'


def _layer_table(result: dict[str, Any]) -> str:
    layers = result.get("layers") or []
    if not layers:
        return "<p>(no aligned calls)</p>"
    has_adapter = any(layer.get("adapter") for layer in layers)
    rows = []
    for i, layer in enumerate(layers):
        st = layer.get("status") or ("ok" if layer.get("passed", True) else "fail")
        ref = layer.get("reference")
        ref = "=" if ref == layer.get("candidate") else ref
        shape = "×".join(map(str, layer.get("shape") or [])) or "–"
        if layer.get("reference_shape") is not None and layer.get("reference_shape") != layer.get("shape"):
            shape += " vs " + ("×".join(map(str, layer["reference_shape"])) or "–")
        mark = f'<span class="st" style="color:{COLORS.get(st, "#333")}">{esc(st)}{"*" if layer.get("reran") else ""}</span>'
        rows.append(
            f'<tr id="layer-{i}"><td class="num">{i}</td><td><code>{esc(str(layer.get("candidate")))}'
            f'{"#" + str(layer.get("call")) if layer.get("call") else ""}</code></td>'
            f'<td><code>{esc(str(ref))}</code></td><td class="mono">{esc(shape)}</td>'
            + (f'<td class="mono">{esc(str(layer.get("adapter") or ""))}</td>' if has_adapter else "")
            + f'<td class="num">{fmt_num(layer.get("max_abs"))}</td><td class="num">{fmt_num(layer.get("rel_l2"))}</td>'
            f'<td class="num">{fmt_cosine(layer.get("cosine"))}</td><td>{mark}</td>'
            f'<td class="muted">{esc(str(layer.get("match") or ""))}</td></tr>')
    head = ('<tr><th class="num">#</th><th>candidate call</th><th>reference</th><th>shape</th>'
            + ("<th>adapter</th>" if has_adapter else "")
            + '<th class="num">max abs</th><th class="num">rel. L2</th><th class="num">cosine</th><th>status</th>'
            '<th>paired by</th></tr>')
    return f'<table class="layers"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _calls(result: dict[str, Any]) -> str:
    parts = []
    for title, field in (("Unmatched calls (no twin found)", "unmatched"),
                         ("Pass-through calls (Identity, eval Dropout) without a twin", "passthrough")):
        sides = result.get(field) or {}
        cand, ref = sides.get("candidate") or [], sides.get("reference") or []
        body = (f"<p>candidate ({len(cand)}): " + (", ".join(f"<code>{esc(n)}</code>" for n in cand) or "none")
                + f"<br>reference ({len(ref)}): " + (", ".join(f"<code>{esc(n)}</code>" for n in ref) or "none") + "</p>")
        parts.append(f"<h3>{title}</h3>{body}")
    return "".join(parts)


def _diagnosis(result: dict[str, Any]) -> str:
    findings = result.get("diagnosis")
    out = []
    if findings:
        items = []
        for f in findings:
            text = f.get("text") if isinstance(f, dict) else None
            items.append(f"<li>{esc(str(text if text else f))}</li>")
        out.append(f'<div class="diag"><b>Diagnosis</b><ul>{"".join(items)}</ul></div>')
    introduced = result.get("introduced")
    if introduced:
        names = [i.get("module", i) if isinstance(i, dict) else i for i in introduced]
        out.append("<p>Errors introduced independently at: " + ", ".join(f"<code>{esc(str(n))}</code>" for n in names) + "</p>")
    return "".join(out)


def _backward(result: dict[str, Any]) -> str:
    """The gradient comparison (``compare(..., backward=True)``): verdict, culprit, worst rows."""
    back = result.get("backward")
    if not back:
        return ""
    verdict = '<span class="pass">PASS</span>' if back.get("passed") else '<span class="fail">FAIL</span>'
    parts = [f"<h3>Backward {verdict}</h3>"]
    if not back.get("passed"):
        parts.append(f'<p>First divergence in backward order <code>{esc(str(back.get("first_divergence") or "–"))}</code>; '
                     f'culprit <code>{esc(str(back.get("culprit") or "(not localized)"))}</code>.</p>')
    layers = sorted(back.get("layers") or [], key=lambda r: (r.get("passed", True), r.get("order", 0)))[:12]
    if layers:
        rows = "".join(f'<tr><td><code>{esc(str(r.get("candidate")))}</code></td><td>{esc(str(r.get("status")))}</td>'
                       f'<td class="num">{fmt_num(r.get("max_abs"))}</td><td class="num">{fmt_num(r.get("rel_l2"))}</td></tr>'
                       for r in layers)
        parts.append('<table><thead><tr><th>module (gradients)</th><th>status</th><th class="num">max abs</th>'
                     f'<th class="num">rel. L2</th></tr></thead><tbody>{rows}</tbody></table>')
    params = sorted(back.get("parameters") or [], key=lambda p: -(p.get("rel_l2") or 0) if isinstance(p.get("rel_l2"), (int, float)) else 0)[:8]
    if params:
        rows = "".join(f'<tr><td><code>{esc(str(p.get("candidate")))}</code></td><td class="num">{fmt_num(p.get("rel_l2"))}</td>'
                       f'<td>{"ok" if p.get("passed") else "fails"}</td></tr>' for p in params)
        parts.append('<table><thead><tr><th>parameter gradient (worst first)</th><th class="num">rel. L2</th>'
                     f'<th>verdict</th></tr></thead><tbody>{rows}</tbody></table>')
    return "".join(parts)


def _reproduce(result: dict[str, Any]) -> str:
    lines = []
    if result.get("test"):
        lines.append(f"pytest '{result['test']}' --report    # the test as it ran (its candidate may be modified on purpose)")
    if result.get("pair"):
        extra = " --summary" if result.get("mode") == "summary" else ""
        device = result.get("device")
        extra += f" --device {device}" if device and device != "cpu" else ""
        lines.append(f"python -m harness compare {result['pair']} --dtype {result.get('dtype')}{extra}"
                     f"    # the registered pair as built")
    return "<pre>" + esc("\n".join(lines) or "(no test or pair recorded)") + "</pre>"


def _result_section(result: dict[str, Any], doc_env: dict[str, Any]) -> str:
    o = result.get("output") or {}
    tol = result.get("tolerance") or {}
    s = status(result)
    parts = [f'<h2>{_verdict(result)} <code>{esc(str(result.get("test") or result.get("pair")))}</code></h2>',
             f'<p class="muted">run {_run_label(result.get("run"))}; device {esc(str(result.get("device", "–")))}; '
             f'mode {esc(str(result.get("mode", "full")))}; took {fmt_seconds(result.get("seconds"))}</p>']
    if s == "error":
        error = result.get("error") or {}
        parts.append(f'<div class="diag"><b>Raised before the comparison finished:</b> '
                     f'<code>{esc(str(error.get("type")))}: {esc(str(error.get("message")))}</code></div>')
        if error.get("traceback"):
            parts.append(f"<pre>{esc(str(error['traceback']))}</pre>")
    else:
        parts.append(
            f'<p>Output: max abs {fmt_num(o.get("max_abs"))}, max rel {fmt_num(o.get("max_rel"))}, '
            f'rel. L2 {fmt_num(o.get("rel_l2"))}, cosine {fmt_cosine(o.get("cosine"))} '
            f'(passes when max abs ≤ atol {fmt_num(tol.get("atol"))} + rtol {fmt_num(tol.get("rtol"))} × max|reference|).</p>')
        if s == "fail":
            parts.append(f'<p>First divergence <code>{esc(str(result.get("first_divergence") or "(none in aligned layers)"))}</code>; '
                         f'culprit (introduces the error itself) <code>{esc(str(result.get("culprit") or "(not localized)"))}</code>.</p>')
        parts.append(_diagnosis(result))
        parts += [f'<p class="note">{esc(str(n))}</p>' for n in result.get("notes") or []]
        outputs = result.get("outputs") or {}
        if len(outputs) > 1:
            rows = "".join(f'<tr><td><code>{esc(k)}</code></td><td class="num">{fmt_num(m.get("max_abs"))}</td>'
                           f'<td class="num">{fmt_num(m.get("rel_l2"))}</td><td class="num">{fmt_cosine(m.get("cosine"))}</td></tr>'
                           for k, m in outputs.items())
            parts.append('<h3>Outputs</h3><table><thead><tr><th>output</th><th class="num">max abs</th>'
                         f'<th class="num">rel. L2</th><th class="num">cosine</th></tr></thead><tbody>{rows}</tbody></table>')
        parts.append("<h3>Error by depth</h3>" + error_plot(result))
        parts.append("<h3>Per-layer table</h3>" + _legend() + _layer_table(result))
        parts.append(_calls(result))
        parts.append(_backward(result))
    parts.append("<h3>Reproduce</h3>" + _reproduce(result))
    parts.append(f'<h3>Environment</h3><p class="muted">{_environment(result.get("environment") or doc_env)}</p>')
    return "\n".join(parts)


def pair_html(results: list[dict[str, Any]], doc_env: dict[str, Any],
              environments: dict[Any, dict[str, Any]] | None = None) -> str:
    """The page of one pair and dtype; each result shows the environment of its own run when known."""
    first = results[0]
    title = f"{first.get('pair') or '(no pair)'} [{first.get('dtype')}]"
    body = [f'<p><a href="../index.html">← all comparisons</a></p><h1>{esc(title)}</h1>']
    envs = environments or {}
    body += [_result_section(r, envs.get((r.get("run") or {}).get("id")) or doc_env) for r in results]
    return _page(title, "\n".join(body))


def write_pair_pages(directory: str | os.PathLike, doc: dict[str, Any]) -> list[Path]:
    """One page per (pair, dtype) under ``directory``; a pair tested by several tests gets one section each."""
    by_page: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(doc["results"], key=lambda r: (status(r) == "pass", key(r))):
        by_page.setdefault(pair_page_name(r.get("pair"), r.get("dtype")), []).append(r)
    directory = Path(directory)
    environments = {run.get("id"): run.get("environment") for run in doc.get("runs") or []}
    written = [atomic_write_text(directory / name, pair_html(rs, doc.get("environment") or {}, environments))
               for name, rs in sorted(by_page.items())]
    # pages of results no longer in the document (after --report-fresh) would be links to the past
    for stale in directory.glob("*.html"):
        if stale.name not in by_page:
            stale.unlink()
    return written


def render(directory: str | os.PathLike, doc: dict[str, Any], history: list[dict[str, Any]] | None = None) -> list[Path]:
    """Write index.html, pairs/*.html and (with a history) dashboard.html into ``directory``."""
    from harness.dashboard import write_dashboard

    directory = Path(directory)
    written = [write_index(directory / "index.html", doc, dashboard=bool(history))]
    written += write_pair_pages(directory / "pairs", doc)
    if history:
        pages = {p.name for p in written if p.parent.name == "pairs"}
        written.append(write_dashboard(directory / "dashboard.html", history, pages))
    return written
