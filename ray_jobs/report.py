"""Visual reports that open from disk (no server).

    python -m ray_jobs.report --shards <generation output URL> [--out gallery.html] [--max 200]
    python -m ray_jobs.report --eval <evaluation output folder>       (rewrites its report.html)
    python -m ray_jobs.report --compare <output A> <output B> [--labels A B] [--out compare.html]
        (two evaluation runs -> one table, paired over the objects both scored, and a side-by-side gallery;
         the table is also written as Markdown beside the HTML)
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.report", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--shards", help="a generation job's output (shards with manifests) or a brace pattern")
    g.add_argument("--eval", help="an evaluation job's output folder")
    g.add_argument("--compare", nargs="+", metavar="OUTPUT", help="two or more evaluation outputs to compare")
    p.add_argument("--labels", nargs="+", help="names of the compared runs (default: A, B, …)")
    p.add_argument("--out", help="where to write the HTML (default: gallery.html / report.html in the folder)")
    p.add_argument("--max", type=int, default=200, help="samples shown (--shards)")
    a = p.parse_args(argv)
    import fsspec

    if a.compare is not None and len(a.compare) < 2:
        print("error: --compare needs at least two evaluation outputs", file=sys.stderr)
        return 2
    labels = a.labels or [chr(ord("A") + i) for i in range(len(a.compare or []))]
    if a.compare and (len(labels) != len(a.compare) or len(set(labels)) != len(labels)
                      or not all(lb.replace("_", "").replace("-", "").isalnum() for lb in labels)):
        print(f"error: --labels needs {len(a.compare)} distinct names of letters, digits, '-' and '_'",
              file=sys.stderr)
        return 2
    try:
        if a.compare:
            from mvboost.eval.output import EvalOutput
            from mvboost.eval.report import compare_report

            page, md = compare_report([EvalOutput(u) for u in a.compare], labels)
            out = a.out or "compare.html"
            with fsspec.open(out.rsplit(".", 1)[0] + ".md", "w") as f:
                f.write(md)
        elif a.shards:
            from mvboost.eval.report import shards_report

            page = shards_report(a.shards, a.max)
            out = a.out or (a.shards.rstrip("/") + "/gallery.html" if "{" not in a.shards else "gallery.html")
        else:
            import json

            from mvboost.eval.output import EvalOutput
            from mvboost.eval.report import eval_report

            ev = EvalOutput(a.eval)
            meta = json.loads(ev.fs.open(ev.path("eval.json"), "rb").read())
            summary = json.loads(ev.fs.open(ev.path("summary.json"), "rb").read())
            records = [r for r in (ev.record(n) for n in meta["objects"]) if r is not None]
            page = eval_report(ev, records, summary)
            out = a.out or a.eval.rstrip("/") + "/report.html"
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with fsspec.open(out, "w") as f:
        f.write(page)
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
