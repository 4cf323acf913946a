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
    return (f'<figure><img src="{_uri(png)}" style="height:{height}px">'
            f'<figcaption>{html.escape(title)}</figcaption></figure>')


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _scored_variant(model_rec: dict) -> str:
    """The variant a report shows for a model on an object: aligned if it was scored, else canonical."""
    v = model_rec.get("aligned", {})
    return "aligned" if v.get("status") != "n/a" and "psnr" in v else "canonical"


def _scored(model_rec: dict) -> dict | None:
    """That variant's record, or None if the model has no 2D scores on the object."""
    v = model_rec.get(_scored_variant(model_rec), {})
    return v if model_rec.get("status") == "done" and v.get("status") != "n/a" and "psnr" in v else None


#: the metrics a report can plot (key, label)
PLOTTED = (("psnr", "PSNR (21 views) ↑"), ("ssim", "SSIM ↑"), ("lpips_vgg", "LPIPS-vgg ↓"),
           ("lpips_alex", "LPIPS-alex ↓"), ("cd", "Chamfer distance ↓"))


def _values(records: list[dict], model: str, key: str, sub: str = "all") -> np.ndarray:
    """One value per scored object (NaN where the model has none)."""
    from .summary import value

    out = []
    for r in records:
        rec = r["models"].get(model, {})
        v = value(rec, _scored_variant(rec), key, sub)
        out.append(np.nan if v is None else v)
    return np.array(out)


def _computed_metrics(records: list[dict], models: list[str]) -> list[tuple[str, str]]:
    done = [r for r in records if r.get("status") == "done"]
    return [(k, label) for k, label in PLOTTED if any(np.isfinite(_values(done, m, k)).any() for m in models)]


def _plots(records: list[dict], models: list[str]) -> list[tuple[str, bytes]]:
    """Per-object bars, a scatter of the second model against the first and histograms, only of the
    metrics that were computed (an LPIPS net left out of the protocol gets no empty axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r.get("status") == "done"]
    names = [r["object"] for r in done]

    def vals(model, key):
        return _values(done, model, key)

    computed = _computed_metrics(records, models)
    plots = []
    for key, label in [c for c in computed if c[0] in ("psnr", "cd")]:
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(names) + 2), 3))
        width = 0.8 / max(1, len(models))
        for i, m in enumerate(models):
            ax.bar(np.arange(len(names)) + i * width, vals(m, key), width, label=m)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"per object: {label}")
        ax.legend(fontsize=7)
        plots.append((f"per-object {key}", _fig_png(fig)))
    pair = [c for c in computed if c[0] in ("psnr", "cd")]
    if len(models) >= 2 and pair:
        fig, axes = plt.subplots(1, len(pair), figsize=(3.5 * len(pair), 3.2), squeeze=False)
        for ax, (key, label) in zip(axes[0], pair):
            a, b = vals(models[0], key), vals(models[1], key)
            ax.scatter(a, b, s=12)
            both = np.concatenate([a, b])
            lim = [np.nanmin(both), np.nanmax(both)] if np.isfinite(both).any() else [0, 1]
            ax.plot(lim, lim, "k--", lw=0.8)
            ax.set_xlabel(models[0])
            ax.set_ylabel(models[1])
            ax.set_title(f"{label}: {models[1]} vs {models[0]}")
        plots.append(("scatter", _fig_png(fig)))
    hist = [c for c in computed if c[0] in ("psnr", "lpips_vgg", "lpips_alex", "cd")]
    if hist:
        fig, axes = plt.subplots(1, len(hist), figsize=(3 * len(hist), 2.8), squeeze=False)
        for ax, (key, label) in zip(axes[0], hist):
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
.bad{color:#b00}.good{color:#070}.neutral{color:#555}</style>"""


def _diff_class(v: dict, higher_is_better: bool) -> str:
    """'good' / 'bad' by the sign of the paired mean difference; exactly zero (or none) is 'neutral'."""
    if v.get("mean") is None or v["mean"] == 0:
        return "neutral"
    return "good" if (v["mean"] > 0) == higher_is_better else "bad"


def _summary_table(summary: dict, variant: str = "aligned") -> str:
    from .summary import format_value

    models = summary["models"]
    rows_in = summary["tables"][variant]
    if not rows_in:
        return "<p>no metric was computed</p>"
    diffs = [k for k in rows_in[0] if " − " in k]
    head = ["metric", "n", *models, *[f"{d} (95 % CI)" for d in diffs], *[f"{m} failed" for m in models],
            *[f"{m} own mean (n)" for m in models], "paper LGM / MVBoost (reference)"]
    rows = []
    for row in rows_in:
        arrow = "↑" if row["higher_is_better"] else "↓"
        cells = [f"<td style='text-align:left'>{html.escape(row['metric'])} {arrow}</td>",
                 f"<td>{row['n']}</td>"]
        cells += [f"<td>{format_value(row[m])}</td>" for m in models]
        cells += [f"<td class='{_diff_class(row[d], row['higher_is_better'])}'>{format_value(row[d])}</td>"
                  for d in diffs]
        cells += [f"<td{' class=bad' if row[f'{m} failed'] else ''}>{row[f'{m} failed']}</td>" for m in models]
        cells += [f"<td>{format_value(row[f'{m} own mean'])} ({row[f'{m} own n']})</td>" for m in models]
        cells.append(f"<td>{html.escape(row.get('paper (reference)', ''))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{''.join(rows)}</table>"


def _header(summary: dict) -> str:
    from .summary import format_value, header_lines

    floor = summary["noise_floor_cd"]
    items = [*header_lines(summary),
             f"- objects: {summary['objects']['done']} scored of {summary['objects']['total']}",
             f"- Chamfer noise floor (GT resampled): {format_value(floor['mean'])} ± {format_value(floor['std'])}"]
    return "<ul>" + "".join(f"<li>{html.escape(i[2:])}</li>" for i in items) + "</ul>"


def _lists(summary: dict) -> str:
    parts = ["<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in summary.get("notes", [])) + "</ul>"]
    if summary.get("frame_warnings"):
        parts.append("<h2>Frame warnings</h2><ul>" + "".join(
            f"<li>{html.escape(w['object'])} ({html.escape(w['model'])}): {html.escape(w['warning'])}</li>"
            for w in summary["frame_warnings"]) + "</ul>")
    fails = [(m, f) for m, fs in summary.get("model_failures", {}).items() for f in fs]
    if fails:
        parts.append("<h2>Model failures</h2><ul>" + "".join(
            f"<li class='bad'>{html.escape(m)} on {html.escape(f['object'])}: {html.escape(f['reason'])}</li>"
            for m, f in fails) + "</ul>")
    return "".join(parts)


def _object_text(model: str, rec: dict, base: dict | None) -> str:
    a = _scored(rec)
    if a is None:
        return f"{model}: not scored"
    lp = a.get("lpips_vgg", a.get("lpips_alex", {})).get("all")
    text = f"{model}: PSNR {a['psnr']['all']:.2f}" + (f", LPIPS {lp:.3f}" if lp is not None else "")
    if a.get("cd") is not None:
        text += f", CD {a['cd']:.4f}"
    b = _scored(base) if base is not None else None
    if b is not None:
        text += f" (Δ PSNR {a['psnr']['all'] - b['psnr']['all']:+.2f})"
    if rec.get("frame_warning"):
        text += " ⚠ frame"
    return text


def eval_report(out, records: list[dict], summary: dict) -> str:
    """``out``: an :class:`mvboost.eval.output.EvalOutput` (images are read from it and embedded)."""
    models = summary["models"]

    def read(rel):
        return _read(out, rel)

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>MVBoost evaluation</title>", STYLE,
             "</head><body><h1>MVBoost evaluation report</h1>", _header(summary),
             "<h2>Summary (aligned)</h2>", _summary_table(summary), _lists(summary), "<h2>Plots</h2>"]
    parts += [_img(png, title, 260) for title, png in _plots(records, models)]
    parts.append("<h2>Objects</h2>")
    for r in records:
        name = r["object"]
        parts.append(f"<div class='row'><h3>{html.escape(name)}</h3>")
        if r.get("status") != "done":
            parts.append(f"<p class='bad'>failed: {html.escape(str(r.get('reason', '')))}</p></div>")
            continue
        parts.append(_img(read(f"objects/{name}/gt_input.png"), "GT input view"))
        parts.append(_img(read(f"objects/{name}/thumbnail_input.png"), "input: thumbnails/0.jpg, matted"))
        parts.append(_img(read(f"objects/{name}/era3d_views.png"), "Era3D views"))
        parts.append("<br>" + _img(read(f"objects/{name}/gt_views.png"), "ground truth (every 3rd view)"))
        for m in models:
            rec = r["models"].get(m, {})
            if rec.get("status") != "done":
                parts.append(f"<p class='bad'>{html.escape(m)}: {html.escape(rec.get('reason', 'missing'))}</p>")
                continue
            base = r["models"].get(models[0]) if m != models[0] else None
            parts.append("<br>" + _img(read(f"objects/{name}/{m}_views.png"), _object_text(m, rec, base)))
        parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts)


def shards_report(source: str, max_samples: int = 200, storage_options: dict | None = None) -> str:
    """A generation run's gallery: per sample the prompt, input, views, renders and refined views."""
    import fsspec

    from ..io.reader import iter_samples, list_shards
    from ..io.sample import INPUT, VIEW_MEMBERS, decode_prompt

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
        for key, fields in iter_samples(url, storage_options):
            prompt = decode_prompt(fields)
            parts.append(f"<div class='row'><b>{html.escape(key)}</b>: {html.escape(prompt)}<br>")
            parts.append(_img(fields.get(INPUT), "input (RGBA)"))
            for column, title in (("views", "Era3D views"), ("renders", "LGM renders"), ("refined", "refined views")):
                parts.append(_img(fields.get(VIEW_MEMBERS[column]), title))
            parts.append("</div>")
            n += 1
            if n >= max_samples:
                break
        if n >= max_samples:
            break
    parts.append(f"<p>{n} samples shown</p></body></html>")
    return "".join(parts)


def compare_runs(outs: list, labels: list[str], n_boot: int = 2000, seed: int = 0) -> tuple[dict, list[dict]]:
    """Two (or more) evaluation outputs as one run: every model of run ``label`` becomes ``label.model``,
    objects keep their names (paired across runs: the table uses the objects all of them scored).
    Returns (summary, merged records)."""
    from .summary import summarise

    merged: dict[str, dict] = {}
    models: list[str] = []
    headers = []
    for out, label in zip(outs, labels):
        meta = json.loads(out.fs.cat(out.path("eval.json")))
        summary = json.loads(out.fs.cat(out.path("summary.json"))) if out.fs.exists(out.path("summary.json")) else {}
        run_models = summary.get("models") or [m.split("=", 1)[0] for m in meta["config"]["job"]["models"]]
        models += [f"{label}.{m}" for m in run_models]
        headers.append({"label": label, "output": out.url, **(summary.get("header") or {})})
        for name in meta["objects"]:
            rec = out.record(name)
            if rec is None:
                continue
            row = merged.setdefault(name, {"object": name, "status": "done", "models": {},
                                           "noise_floor_cd": rec.get("noise_floor_cd")})
            if rec.get("status") != "done":
                row["status"], row["reason"] = "failed", f"{label}: {rec.get('reason', '')}"
            for m in run_models:
                row["models"][f"{label}.{m}"] = rec.get("models", {}).get(m, {"status": "failed",
                                                                                "reason": "not evaluated"})
    records = list(merged.values())
    for r in records:  # an object one run did not evaluate is a failure of that run's models, not dropped
        for m in models:
            r["models"].setdefault(m, {"status": "failed", "reason": "not in this run"})
    summary = summarise(records, models, n_boot, seed, header={"runs": headers})
    return summary, records


def compare_report(outs: list, labels: list[str], n_boot: int = 2000, seed: int = 0) -> tuple[str, str]:
    """(HTML, Markdown): one table (every run's models side by side, paired differences against the first)
    and a gallery with each run's renders of every object beside the ground truth."""
    from .summary import markdown

    summary, records = compare_runs(outs, labels, n_boot, seed)
    runs = summary["header"]["runs"]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>MVBoost evaluation comparison</title>", STYLE,
             "</head><body><h1>Comparison of evaluation runs</h1><ul>"]
    for run in runs:
        split = run.get("split") or {}
        parts.append(f"<li>{html.escape(run['label'])}: {html.escape(run['output'])} "
                     f"(mode {html.escape(str(run.get('mode')))}"
                     f", split {html.escape(str(split.get('split')))}, {split.get('objects')} objects, protocol sha256 "
                     f"{html.escape(str((run.get('protocol') or {}).get('sha256', ''))[:16])}…)</li>")
    shas = {str((run.get("protocol") or {}).get("sha256")) for run in runs}
    if len(shas) > 1:
        parts.append("<li class='bad'>the runs used different protocols: their numbers are not comparable</li>")
    parts += ["</ul><h2>Summary (aligned)</h2>", _summary_table(summary), _lists(summary), "<h2>Objects</h2>"]
    for r in records:
        name = r["object"]
        parts.append(f"<div class='row'><h3>{html.escape(name)}</h3>")
        gt = _read(outs[0], f"objects/{name}/gt_views.png")
        parts.append(_img(gt, "ground truth (every 3rd view)"))
        for out, label in zip(outs, labels):
            for m in [m for m in summary["models"] if m.startswith(label + ".")]:
                rec = r["models"].get(m, {})
                if rec.get("status") != "done":
                    parts.append(f"<p class='bad'>{html.escape(m)}: {html.escape(rec.get('reason', 'missing'))}</p>")
                    continue
                png = _read(out, f"objects/{name}/{m.split('.', 1)[1]}_views.png")
                parts.append("<br>" + _img(png, _object_text(m, rec, None)))
        parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts), markdown(summary)


def _read(out, rel: str) -> bytes | None:
    p = out.path(rel)
    if not out.fs.exists(p):
        return None
    with out.fs.open(p, "rb") as f:
        return f.read()
