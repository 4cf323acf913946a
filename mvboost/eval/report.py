"""Self-contained HTML reports (open from disk, no server; images and plots embedded as data URIs):

* ``eval_report``: plots (per-object PSNR and CD per model, base vs other models scatter, metric
  histograms) and a gallery row per object (input, Era3D views, each model's renders beside the GT,
  the metric deltas);
* ``shards_report``: a generation run's samples (prompt, input, the 6 views, renders, refined views)
  and the run's summary.
"""
from __future__ import annotations

import base64
import html
import io
import json

import numpy as np


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _img(png: bytes | None, title: str = "", height: int = 96) -> str:
    if not png:
        return ""
    return f'<figure><img src="{_uri(png)}" style="height:{height}px"><figcaption>{html.escape(title)}</figcaption></figure>'


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plots(records: list[dict], models: list[str]) -> list[tuple[str, bytes]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r.get("status") == "done"]
    names = [r["object"] for r in done]

    def vals(model, key, sub="all"):
        out = []
        for r in done:
            m = r["models"].get(model, {})
            v = m.get("aligned", {}).get(key) if m.get("status") == "done" else None
            v = v.get(sub) if isinstance(v, dict) else v
            out.append(np.nan if v is None else float(v))
        return np.array(out)

    plots = []
    for key, label in (("psnr", "PSNR (21 views) ↑"), ("cd", "Chamfer distance ↓")):
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(names) + 2), 3))
        width = 0.8 / max(1, len(models))
        for i, m in enumerate(models):
            ax.bar(np.arange(len(names)) + i * width, vals(m, key), width, label=m)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"per object: {label}")
        ax.legend(fontsize=7)
        plots.append((f"per-object {key}", _fig_png(fig)))
    if len(models) >= 2:
        fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
        for ax, (key, label) in zip(axes, (("psnr", "PSNR"), ("cd", "CD"))):
            a, b = vals(models[0], key), vals(models[1], key)
            ax.scatter(a, b, s=12)
            lim = [np.nanmin([a, b]), np.nanmax([a, b])] if np.isfinite([a, b]).any() else [0, 1]
            ax.plot(lim, lim, "k--", lw=0.8)
            ax.set_xlabel(models[0])
            ax.set_ylabel(models[1])
            ax.set_title(f"{label}: {models[1]} vs {models[0]}")
        plots.append(("scatter", _fig_png(fig)))
    fig, axes = plt.subplots(1, 3, figsize=(9, 2.8))
    for ax, (key, label) in zip(axes, (("psnr", "PSNR"), ("lpips_vgg", "LPIPS-vgg"), ("cd", "CD"))):
        for m in models:
            v = vals(m, key)
            v = v[np.isfinite(v)]
            if len(v):
                ax.hist(v, bins=min(20, max(3, len(v))), alpha=0.5, label=m)
        ax.set_title(label)
        ax.legend(fontsize=7)
    plots.append(("histograms", _fig_png(fig)))
    return plots


STYLE = """<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}figure{display:inline-block;
margin:2px 6px;vertical-align:top}figcaption{font-size:11px;color:#555}.row{border-top:1px solid #ddd;padding:6px 0}
.bad{color:#b00}.good{color:#070}</style>"""


def _summary_table(summary: dict) -> str:
    from .summary import format_value

    models = summary["models"]
    diffs = [k for k in summary["tables"]["aligned"][0] if " − " in k]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["metric", *models, *diffs, "paper (reference)"])
    rows = []
    for row in summary["tables"]["aligned"]:
        cells = [f"<td style='text-align:left'>{html.escape(row['metric'])} {'↑' if row['higher_is_better'] else '↓'}</td>"]
        cells += [f"<td>{format_value(row[m])}</td>" for m in models]
        for d in diffs:
            v = row[d]
            better = v["mean"] is not None and (v["mean"] > 0) == row["higher_is_better"]
            cls = "" if v["mean"] is None else f" class='{'good' if better else 'bad'}'"
            cells.append(f"<td{cls}>{format_value(v)}</td>")
        cells.append(f"<td>{html.escape(row['paper (reference)'])}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def eval_report(out, records: list[dict], summary: dict) -> str:
    """``out``: an :class:`mvboost.eval.job.EvalOutput` (images are read from it and embedded)."""
    models = summary["models"]

    def read(rel):
        p = out.path(rel)
        if not out.fs.exists(p):
            return None
        with out.fs.open(p, "rb") as f:
            return f.read()

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>MVBoost evaluation</title>", STYLE,
             "</head><body><h1>MVBoost evaluation report</h1>",
             f"<p>{summary['objects']['done']} objects scored of {summary['objects']['total']}; split "
             f"{html.escape(json.dumps(summary.get('split', {})))}; Chamfer noise floor "
             f"{summary['noise_floor_cd']['mean'] or 0:.4f} ± {summary['noise_floor_cd']['std'] or 0:.4f}.</p>",
             "<h2>Summary (aligned)</h2>", _summary_table(summary), "<h2>Plots</h2>"]
    parts += [_img(png, title, 260) for title, png in _plots(records, models)]
    parts.append("<h2>Objects</h2>")
    for r in records:
        name = r["object"]
        parts.append(f"<div class='row'><h3>{html.escape(name)}</h3>")
        if r.get("status") != "done":
            parts.append(f"<p class='bad'>failed: {html.escape(str(r.get('reason', '')))}</p></div>")
            continue
        parts.append(_img(read(f"objects/{name}/gt_input.png"), "input"))
        parts.append(_img(read(f"objects/{name}/era3d_views.png"), "Era3D views"))
        parts.append("<br>" + _img(read(f"objects/{name}/gt_views.png"), "ground truth (every 3rd view)"))
        base = r["models"].get(models[0], {})
        for m in models:
            rec = r["models"].get(m, {})
            if rec.get("status") != "done":
                parts.append(f"<p class='bad'>{html.escape(m)}: {html.escape(rec.get('reason', 'missing'))}</p>")
                continue
            a = rec["aligned"]
            text = f"{m}: PSNR {a['psnr']['all']:.2f}, LPIPS {a.get('lpips_vgg', a.get('lpips_alex', {})).get('all', float('nan')):.3f}"
            if a.get("cd") is not None:
                text += f", CD {a['cd']:.4f}"
            if m != models[0] and base.get("status") == "done":
                text += f" (Δ PSNR {a['psnr']['all'] - base['aligned']['psnr']['all']:+.2f})"
            if rec.get("frame_warning"):
                text += " ⚠ frame"
            parts.append("<br>" + _img(read(f"objects/{name}/{m}_views.png"), text))
        parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts)


def shards_report(source: str, max_samples: int = 200, storage_options: dict | None = None) -> str:
    """A generation run's gallery: per sample the prompt, input, views, renders and refined views."""
    import fsspec

    from ..io.sample import INPUT, VIEW_MEMBERS, decode_prompt, iter_tar
    from ..io.shards import list_shards

    listing = list_shards(source, storage_options)
    fs, base = fsspec.core.url_to_fs(source, **(storage_options or {}))
    summary = ""
    p = base.rstrip("/") + "/summary.json"
    if fs.exists(p):
        with fs.open(p, "rb") as f:
            summary = f"<pre>{html.escape(json.dumps(json.loads(f.read()), indent=1)[:6000])}</pre>"
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>MVBoost generation run</title>", STYLE,
             f"</head><body><h1>Generation run {html.escape(source)}</h1>",
             f"<p>{len(listing.urls)} committed shards"
             + (f"; skipped: {html.escape(str(listing.skipped))}" if listing.skipped else "") + "</p>",
             "<h2>Summary</h2>", summary, "<h2>Samples</h2>"]
    n = 0
    for url in listing.urls:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            for key, fields in iter_tar(f):
                prompt = decode_prompt(fields)
                parts.append(f"<div class='row'><b>{html.escape(key)}</b>: {html.escape(prompt)}<br>")
                parts.append(_img(fields.get(INPUT), "input (RGBA)"))
                for column, title in (("views", "Era3D views"), ("renders", "LGM renders"),
                                      ("refined", "refined views")):
                    parts.append(_img(fields.get(VIEW_MEMBERS[column]), title))
                parts.append("</div>")
                n += 1
                if n >= max_samples:
                    break
        if n >= max_samples:
            break
    parts.append(f"<p>{n} samples shown</p></body></html>")
    return "".join(parts)
