"""``python -m harness report render|merge|diff``: pages from JSON, shard merging, run diffs.

- ``render [DIR]``: index.html, pairs/*.html and (with a history.jsonl) dashboard.html from
  DIR/parity.json (default reports/).
- ``merge SHARD.json ... --out DIR``: one report from several (CI shards each running a slice, or
  earlier runs): results keyed by (test, pair, dtype), the newer run winning; one history line for
  the merged run (partial unless every shard 1..n of one split is present and none was partial
  for another reason); pages rendered.
- ``diff OLD.json NEW.json``: per key, regressions (newly failing, error grown more than 10x while
  passing), fixes, status changes, new and gone results; exit 1 when anything regressed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "run", "merged_stamp"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="report_command", required=True, metavar="ACTION")
    p = sub.add_parser("render", help="render index.html, pair pages and dashboard.html from DIR/parity.json")
    p.add_argument("dir", nargs="?", default="reports", help="report folder (default reports)")
    p = sub.add_parser("merge", help="merge report JSON files (CI shards) into one report folder")
    p.add_argument("inputs", nargs="+", metavar="REPORT.json", help="parity.json files to merge")
    p.add_argument("--out", default="reports", help="folder for the merged parity.json, history and pages (default reports)")
    p = sub.add_parser("diff", help="what changed between two reports; exit 1 on a regression")
    p.add_argument("old", metavar="OLD.json")
    p.add_argument("new", metavar="NEW.json")
    p.add_argument("--json", action="store_true", help="print the diff as JSON")


def run(args: argparse.Namespace) -> int:
    return {"render": _render, "merge": _merge, "diff": _diff}[args.report_command](args)


def _render(args: argparse.Namespace) -> int:
    from harness.pages import render
    from harness.runs import load_document, read_history

    directory = Path(args.dir)
    source = directory / "parity.json"
    if not source.is_file():
        raise ValueError(f"{source} does not exist; write one with pytest --report or give the report folder "
                         f"(python -m harness report render DIR)")
    written = render(directory, load_document(source), read_history(directory / "history.jsonl"))
    print(f"rendered {len(written)} pages into {directory}: index.html"
          + (", dashboard.html" if (directory / "dashboard.html") in written else "") + ", pairs/")
    return 0


def merged_stamp(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run stamp of a merge: the shards it joins, and why it is partial if it is."""
    from harness.runs import run_stamp

    runs = [run for d in docs for run in d.get("runs", [])]
    why: list[str] = []
    shards = sorted({run["shard"] for run in runs if run.get("shard")})
    if shards:
        totals = {s.split("/")[1] for s in shards}
        expected = {f"{i}/{n}" for n in totals for i in range(1, int(n) + 1)}
        if len(totals) > 1:
            why.append(f"shards of different splits ({', '.join(shards)})")
        elif missing := sorted(expected - set(shards)):
            why.append(f"missing shard{'s' * (len(missing) > 1)} {', '.join(missing)}")
    for run in runs:
        why += [w for w in run.get("why_partial", []) if not w.startswith("shard ")]
    commits = sorted({str(run.get("commit")) for run in runs if run.get("commit")})
    stamp = run_stamp(commit=commits[0] if len(commits) == 1 else ("mixed: " + ", ".join(commits) if commits else None),
                      selection=f"merge of {len(docs)} reports" + (f" (shards {', '.join(shards)})" if shards else ""),
                      why_partial=list(dict.fromkeys(why)))
    stamp["merged"] = [run.get("id") for run in runs]
    return stamp


def _merge(args: argparse.Namespace) -> int:
    from harness.pages import render
    from harness.files import atomic_write_text
    from harness.runs import append_history, history_entry, load_document, merge_documents, read_history

    docs = []
    for name in args.inputs:
        if not Path(name).is_file():
            raise ValueError(f"{name} does not exist (merge takes parity.json files, e.g. reports/shard-1/parity.json)")
        docs.append(load_document(name))
    doc = merge_documents(docs)
    out = Path(args.out)
    atomic_write_text(out / "parity.json", json.dumps(doc, indent=1, allow_nan=False))
    stamp = merged_stamp(docs)
    history = out / "history.jsonl"
    append_history(history, history_entry(stamp, doc["results"], doc.get("environment")))
    render(out, doc, read_history(history))
    partial = f" (partial: {', '.join(stamp['why_partial'])})" if stamp["partial"] else ""
    print(f"merged {len(docs)} reports into {out / 'parity.json'}: {len(doc['results'])} results{partial}; "
          f"pages in {out}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    from harness.runs import diff_documents, load_document

    for name in (args.old, args.new):
        if not Path(name).is_file():
            raise ValueError(f"{name} does not exist (diff takes two parity.json files)")
    changes = diff_documents(load_document(args.old), load_document(args.new))
    if args.json:
        print(json.dumps(changes, indent=2, sort_keys=True))
    else:
        for what, rows in changes.items():
            for r in rows:
                label = f"{r['pair']}[{r['dtype']}] {r['test'] or ''}".rstrip()
                extra = f": {'; '.join(r['why'])}" if r.get("why") else ""
                print(f"{what:<9} {label} ({r['before'] or '-'} -> {r['after'] or '-'}){extra}")
        counts = ", ".join(f"{len(rows)} {what}" for what, rows in changes.items())
        print(f"{counts}")
    return 1 if changes["regressed"] else 0
