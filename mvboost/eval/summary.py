"""One table for every model side by side (Markdown, CSV, JSON): 2D metrics over all views and novel
views, 3D variants, the paired difference of each model against the first with a bootstrap 95 %
interval, object counts, the Chamfer noise floor, and the paper's numbers in a separate column."""
from __future__ import annotations

import csv
import io
import json

import numpy as np

#: (key, sub-key, label, higher is better)
METRICS = [
    ("psnr", "all", "PSNR (21 views)", True), ("psnr", "novel", "PSNR (novel 20)", True),
    ("ssim", "all", "SSIM (21)", True), ("ssim", "novel", "SSIM (novel 20)", True),
    ("lpips_vgg", "all", "LPIPS-vgg (21)", False), ("lpips_vgg", "novel", "LPIPS-vgg (novel 20)", False),
    ("lpips_alex", "all", "LPIPS-alex (21)", False), ("lpips_alex", "novel", "LPIPS-alex (novel 20)", False),
    ("cd", None, "CD (Euclidean, ½+½)", False), ("cd_sum", None, "CD sum", False), ("cd_sq", None, "CD squared", False),
    ("f@0.05", None, "F@0.05", True), ("f@0.1", None, "F@0.1", True), ("f@0.2", None, "F@0.2", True),
    ("f_sq@0.05", None, "F_sq@0.05", True),
]
#: MVBoost paper, GSO (reference only: a different, unpublished protocol)
PAPER = {"PSNR (21 views)": "LGM 17.148 / MVBoost 18.561", "SSIM (21)": "0.776 / 0.859",
         "LPIPS-vgg (21)": "0.220 / 0.131", "CD (Euclidean, ½+½)": "0.17032 / 0.10110", "F@0.1": "0.6349 / 0.7977"}


def _value(model_rec: dict, variant: str, key: str, sub: str | None):
    v = model_rec.get(variant, {}).get(key)
    if isinstance(v, dict):
        v = v.get(sub)
    return None if v is None else float(v)


def bootstrap_ci(diff: np.ndarray, n: int, seed: int) -> tuple[float, float]:
    if len(diff) < 2 or n <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(records: list[dict], models: list[str], n_boot: int = 2000, seed: int = 0) -> dict:
    done = [r for r in records if r.get("status") == "done"]
    out = {"objects": {"total": len(records), "done": len(done),
                       "failed": [{"object": r["object"], "reason": r.get("reason", "")} for r in records
                                  if r.get("status") != "done"]},
           "models": models, "tables": {}}
    floors = np.array([r["noise_floor_cd"] for r in done if r.get("noise_floor_cd") is not None])
    out["noise_floor_cd"] = {"mean": float(floors.mean()) if len(floors) else None,
                             "std": float(floors.std()) if len(floors) else None, "objects": len(floors)}
    for variant in ("aligned", "canonical"):
        rows = []
        for key, sub, label, higher in METRICS:
            row = {"metric": label, "higher_is_better": higher}
            vals = {}
            for m in models:
                per = {r["object"]: _value(r["models"].get(m, {}), variant, key, sub) for r in done
                       if r["models"].get(m, {}).get("status") == "done"}
                per = {k: v for k, v in per.items() if v is not None and np.isfinite(v)}
                vals[m] = per
                row[m] = float(np.mean(list(per.values()))) if per else None
                row[f"{m} n"] = len(per)
            base = models[0]
            for m in models[1:]:
                common = sorted(set(vals[base]) & set(vals[m]))
                diff = np.array([vals[m][o] - vals[base][o] for o in common])
                lo, hi = bootstrap_ci(diff, n_boot, seed)
                row[f"{m} − {base}"] = {"mean": float(diff.mean()) if len(diff) else None, "ci95": [lo, hi],
                                        "objects": len(common)}
            row["paper (reference)"] = PAPER.get(label, "") if variant == "aligned" else ""
            if any(row[f"{m} n"] for m in models):  # metrics nobody computed (e.g. an LPIPS net left out) are dropped
                rows.append(row)
        out["tables"][variant] = rows
    return out


def format_value(v, digits=4) -> str:
    """A table cell: a mean, or a paired difference with its 95 % interval ("+0.0123 [-0.01, +0.03]")."""
    if v is None:
        return "–"
    if isinstance(v, dict):
        if v.get("mean") is None:
            return "–"
        lo, hi = v["ci95"]
        ci = "" if np.isnan(lo) else f" [{lo:+.{digits}f}, {hi:+.{digits}f}]"
        return f"{v['mean']:+.{digits}f}{ci}"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(summary: dict) -> str:
    models = summary["models"]
    diffs = [f"{m} − {models[0]}" for m in models[1:]]
    lines = ["# Evaluation summary", "",
             f"Objects: {summary['objects']['done']} scored of {summary['objects']['total']}"
             + (f"; failed: {len(summary['objects']['failed'])}" if summary['objects']['failed'] else ""),
             f"Split: {summary.get('split', {})}",
             f"Chamfer noise floor (GT resampled): {format_value(summary['noise_floor_cd']['mean'])} ± "
             f"{format_value(summary['noise_floor_cd']['std'])}", ""]
    for variant in ("aligned", "canonical"):
        lines += [f"## {variant} ({'yaw/axis search + ICP' if variant == 'aligned' else 'no search, no ICP'})", ""]
        head = ["metric", *models, *[f"{d} (95 % CI)" for d in diffs], "objects"]
        if variant == "aligned":
            head.append("paper (reference, other protocol)")
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in summary["tables"][variant]:
            arrow = "↑" if row["higher_is_better"] else "↓"
            cells = [f"{row['metric']} {arrow}", *[format_value(row[m]) for m in models], *[format_value(row[d]) for d in diffs],
                     "/".join(str(row[f"{m} n"]) for m in models)]
            if variant == "aligned":
                cells.append(row["paper (reference)"])
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if summary["objects"]["failed"]:
        lines += ["## Failed objects", ""] + [f"- {f['object']}: {f['reason']}" for f in summary["objects"]["failed"]]
    return "\n".join(lines) + "\n"


def to_csv(summary: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    models = summary["models"]
    diffs = [f"{m} − {models[0]}" for m in models[1:]]
    w.writerow(["variant", "metric", *models, *[f"{d} mean" for d in diffs], *[f"{d} ci95_lo" for d in diffs],
                *[f"{d} ci95_hi" for d in diffs]])
    for variant, rows in summary["tables"].items():
        for row in rows:
            w.writerow([variant, row["metric"], *[row[m] for m in models], *[row[d]["mean"] for d in diffs],
                        *[row[d]["ci95"][0] for d in diffs], *[row[d]["ci95"][1] for d in diffs]])
    return buf.getvalue()


def write_summary(out, summary: dict) -> None:
    out.write("summary.json", json.dumps(summary, indent=1, default=float).encode())
    out.write("summary.csv", to_csv(summary).encode())
    out.write("summary.md", markdown(summary).encode())
