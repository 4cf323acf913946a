"""The boost experiment: does training on shards make a reconstruction model better on objects it never saw?

    python bench/boost_experiment.py --out outputs/boost             # full size (the README's table)
    python bench/boost_experiment.py --out outputs/boost_ci --size ci

One command, resumable (a rerun skips every step already done, training resumes from its last
checkpoint), with a line per step and progress bars. Everything comes from what packages ship:

1. **Assets**: the two-domain library of :mod:`mvboost.eval.asset_library` (``pybullet_data``'s
   procedural meshes; domain A: smooth hue bands, shipped proportions; domain B: fine checker with dots,
   stretched 1.6x), disjoint train / held-out lists pinned with their sha256.
2. **Shards**: the generation job's asset source (``prompts.source: assets``, stages
   ``[asset_render, write]``) on each domain's train list, in process.
3. **Base**: a small LGM (the real class; the tiny preset at a 32² input, see ``MODEL``) trained from random
   weights, every parameter (``lora.mode: full``), on domain-A shards.
4. **Boosted**: the base + LoRA (the paper's boosting) trained on domain-B shards.
5. **Evaluation**: the evaluation job in process, ``gt_ortho`` mode (the ground truth at Era3D's cameras:
   what the shards give LGM) and ``gt4`` mode (LGM's own input cameras), base vs boosted, on held-out B
   (the boost) and held-out A (forgetting), paired differences with bootstrap 95 % intervals.
6. **Report**: ``summary.md`` / ``summary.json`` (the table), ``curves.png`` (training losses),
   ``report.html`` (the table, the curves, the evaluation reports).
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: the LGM of the experiment: the tiny preset's structure at a 32² input (1.6 M parameters, 1,024 Gaussians),
#: small enough to train from scratch on two CPU cores
MODEL = dict(input_size=32, down_channels=(16, 32, 64, 64), up_channels=(64, 64, 32), splat_size=16, output_size=64,
             norm_groups=8, num_heads=4)


@dataclass(frozen=True)
class Size:
    per_domain: int  # objects per domain (train + held-out)
    held_out: int
    image: int  # shard views and GT input views (px)
    base_steps: int
    boost_steps: int
    batch: int
    base_lr: float
    boost_lr: float
    lora_rank: int
    eval_resolution: int
    gt4: bool  # also evaluate in gt4 mode


SIZES = {
    "full": Size(per_domain=80, held_out=16, image=64, base_steps=2000, boost_steps=800, batch=4, base_lr=2e-3,
                 boost_lr=2e-3, lora_rank=16, eval_resolution=64, gt4=True),
    # ci: measured 3.4 min on 2 cores, held-out B PSNR +0.98 dB [+0.30, +1.54], LPIPS -0.030 [-0.038, -0.021];
    # at 300 + 150 steps: +2.37 dB [+1.18, +3.52] in 5.5 min (too long for the suite)
    "ci": Size(per_domain=30, held_out=8, image=64, base_steps=150, boost_steps=80, batch=4, base_lr=2e-3,
               boost_lr=2e-3, lora_rank=16, eval_resolution=48, gt4=False),
}


def log(msg: str) -> None:
    print(f"[boost {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- 1-2: assets and shards ---------------------------------------------------------------------------------
def build_shards(out: Path, size: Size) -> dict:
    from mvboost.eval.asset_library import build_asset_library
    from mvboost.pipeline.job import load_job_config, run_in_process

    lib = out / "library"
    split = build_asset_library(lib, per_domain=size.per_domain, held_out=size.held_out, thumbnails=False)
    for domain in ("A", "B"):
        cfg = load_job_config(REPO / "ray_jobs" / "configs" / "assets_smoke.yaml", [
            f"job.output={out / 'shards' / domain}", f"prompts.assets={lib}",
            f"prompts.asset_list={lib}/{domain}_train.txt",
            f"asset_render.size={size.image}", "job.shard_size=16", "job.progress=false", f"job.name=boost-{domain}"])
        s = run_in_process(cfg)
        log(f"shards {domain}: {s.accepted} accepted ({s.skipped_already_done} of them done by an earlier run), "
            f"{s.rejected} rejected")
        if s.rejected:
            raise SystemExit(f"error: {s.rejected} asset(s) of domain {domain} were rejected: {s.rejected_by_reason}")
    return split


# ---- 3-4: training ------------------------------------------------------------------------------------------
def init_model(out: Path, seed: int = 0) -> Path:
    """The random-weight starting point of the base, saved like any LGM checkpoint (+ its config)."""
    import torch

    from mvboost.models.lgm import LGM, LGM_FILENAME, LGMConfig, save_lgm

    folder = out / "init"
    if not (folder / LGM_FILENAME).is_file():
        torch.manual_seed(seed)
        save_lgm(LGM(LGMConfig.preset("tiny", **MODEL)), folder, dtype=torch.float32, with_config=True)
    return folder


def train(out: Path, name: str, mode: str, checkpoint: Path, data: Path, steps: int, lr: float, size: Size,
          extra: list[str] | tuple = ()) -> Path:
    """Run (or resume) one training run in process; returns its run folder. Every step's metrics are appended to
    ``history.jsonl`` there (the curves). ``extra``: more ``--set`` overrides of the training config."""
    import torch

    from mvboost.config import load_config
    from mvboost.train.config import TrainConfig
    from mvboost.train.context import LocalContext
    from mvboost.train.loop import train_loop

    cfg = load_config(TrainConfig, None, [
        f"model.checkpoint={checkpoint}", f"lora.mode={mode}", f"lora.rank={size.lora_rank}",
        f"lora.alpha={size.lora_rank}", f"optim.lr={lr}", "optim.weight_decay=0", "deepspeed.zero_stage=0",
        "deepspeed.precision=fp32", f"deepspeed.micro_batch={size.batch}", f"train.steps={steps}",
        f"train.checkpoint_every={max(1, steps // 4)}", "train.log_every=1", "train.lambda_lpips=0",
        f"data.source={data}", f"run.name={name}", f"run.storage_path={out / 'runs'}", "run.num_to_keep=1", *extra])
    local = LocalContext(cfg)
    history = local.root / "history.jsonl"
    done = _last_step(local.root)
    if done >= steps:
        log(f"{name}: done ({steps} steps)")
        return local.root
    log(f"{name}: {mode} training, {steps} steps of {size.batch} samples" + (f", resuming at {done}" if done else ""))
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=done, desc=name, mininterval=5)

    def report(metrics, checkpoint_dir):
        with history.open("a") as f:
            f.write(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}) + "\n")
        bar.update(1)
        LocalContext.report(local, metrics, checkpoint_dir)

    local.ctx.report = report
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_loop(cfg, local.ctx)
    bar.close()
    return local.root


def _last_step(run: Path) -> int:
    ckpts = sorted(run.glob("checkpoint_*"))
    return int(ckpts[-1].name.split("_")[-1]) if ckpts else 0


def read_history(run: Path) -> list[dict]:
    """The metrics of every step, the last record of a step winning (a resumed run repeats the steps after its
    last checkpoint)."""
    path = run / "history.jsonl"
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            rows[int(rec["step"])] = rec
    return [rows[k] for k in sorted(rows)]


# ---- 5: evaluation ------------------------------------------------------------------------------------------
def evaluate(out: Path, mode: str, domain: str, models: list[str], size: Size) -> dict:
    from mvboost.config import load_config
    from mvboost.eval.config import EvalConfig
    from mvboost.eval.job import run_in_process, select_objects

    lib = out / "library"
    dest = out / "eval" / f"{mode}_{domain}"
    cfg = load_config(EvalConfig, REPO / "ray_jobs" / "configs" / "evaluate_smoke.yaml", [
        f"job.objects={lib}", f"job.split={lib}/{domain}_held_out.txt", f"job.output={dest}", f"job.mode={mode}",
        "job.bootstrap=2000", "job.exports=false", "protocol.align=false",
        f"protocol.resolution={size.eval_resolution}",
        f"protocol.input_size={size.image}", "protocol.lpips_nets=[alex]", f"job.name=boost-{mode}-{domain}"])
    cfg.job.models = list(models)
    pending = len(select_objects(cfg).pending)
    log(f"evaluation {mode}, held-out {domain}: {pending} object(s) to score")
    from tqdm.auto import tqdm

    with tqdm(total=pending, desc=f"eval {mode} {domain}", mininterval=5) as bar:
        return run_in_process(cfg, progress=bar)


# ---- 6: report ----------------------------------------------------------------------------------------------
ROWS = (("PSNR (21 views)", "PSNR ↑"), ("LPIPS-alex (21)", "LPIPS-alex ↓"), ("SSIM (21)", "SSIM ↑"),
        ("CD (Euclidean, ½+½)", "CD ↓"), ("F@0.1", "F@0.1 ↑"))


def table(results: dict) -> list[dict]:
    """One row per (mode, held-out domain, metric): base, boosted, boosted − base [95 % interval], n."""
    rows = []
    for (mode, domain), summary in results.items():
        for row in summary["tables"].get("canonical", []):
            for label, short in ROWS:
                if row["metric"] == label:
                    diff = row["boosted − base"]
                    rows.append({"mode": mode, "held_out": domain, "metric": short, "n": row["n"], "base": row["base"],
                                 "boosted": row["boosted"], "diff": diff["mean"], "ci95": diff["ci95"]})
    return rows


def verdict(rows: list[dict]) -> dict:
    """The targets: on held-out B, PSNR +1 dB or more with the interval above 0 and LPIPS lower with the
    interval below 0; on held-out A, PSNR no worse than -0.5 dB."""
    def get(domain, metric, mode="gt_ortho"):
        return next((r for r in rows if r["mode"] == mode and r["held_out"] == domain and r["metric"] == metric), None)

    psnr_b, lpips_b, psnr_a = get("B", "PSNR ↑"), get("B", "LPIPS-alex ↓"), get("A", "PSNR ↑")
    return {"psnr_B_gain_ge_1dB": bool(psnr_b and psnr_b["diff"] >= 1.0),
            "psnr_B_lower_bound_gt_0": bool(psnr_b and psnr_b["ci95"][0] > 0),
            "lpips_B_upper_bound_lt_0": bool(lpips_b and lpips_b["ci95"][1] < 0),
            "psnr_A_change_ge_-0.5dB": bool(psnr_a and psnr_a["diff"] >= -0.5)}


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Boost experiment ({meta['size']})", "",
             f"Held-out objects per domain: {meta['held_out']}; training objects per domain: "
             f"{meta['per_domain'] - meta['held_out']}. Base: {meta['base_steps']} full-parameter steps on domain A; "
             f"boosted: + LoRA r={meta['lora_rank']}, {meta['boost_steps']} steps on domain B (batch {meta['batch']}). "
             "Canonical frame (no alignment), paired differences with bootstrap 95 % intervals.", "",
             "| mode | held-out | metric | n | base | boosted | boosted − base [95 % CI] |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['held_out']} | {r['metric']} | {r['n']} | {r['base']:.4f} | "
                     f"{r['boosted']:.4f} | {r['diff']:+.4f} [{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}] |")
    lines += ["", "Targets: " + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in meta["verdict"].items()),
              f"Wall time: {meta['seconds'] / 60:.1f} min (this run; steps done by earlier runs are not counted)", ""]
    return "\n".join(lines)


def curves_png(runs: dict[str, Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, run in runs.items():
        hist = read_history(run)
        if not hist:
            continue
        steps = [h["step"] for h in hist]
        for ax, key in zip(axes, ("loss", "psnr")):
            vals = [h[key] for h in hist]
            k = max(1, len(vals) // 50)  # running mean over ~2 % of the run
            smooth = [sum(vals[max(0, i - k):i + 1]) / len(vals[max(0, i - k):i + 1]) for i in range(len(vals))]
            ax.plot(steps, smooth, label=name)
    axes[0].set_title("training loss (MSE rgb + MSE alpha)")
    axes[1].set_title("training PSNR of the batch (dB)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_html(out: Path, md: str, results: dict) -> str:
    import html

    img = base64.b64encode((out / "curves.png").read_bytes()).decode()
    links = "".join(f'<li><a href="eval/{m}_{d}/report.html">{m}, held-out {d}</a></li>' for m, d in results)
    return (f"<!doctype html><meta charset='utf-8'><title>MVBoost boost experiment</title>"
            f"<pre>{html.escape(md)}</pre><img src='data:image/png;base64,{img}' alt='training curves'>"
            f"<h2>Evaluation reports</h2><ul>{links}</ul>")


def run(out: Path, size_name: str, overrides: dict | None = None) -> dict:
    """The whole experiment; returns the summary (also in ``out/summary.json``)."""
    size = replace(SIZES[size_name], **(overrides or {}))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    split = build_shards(out, size)
    from mvboost.train.context import latest_adapter, latest_model

    base_run = train(out, "base", "full", init_model(out), out / "shards" / "A", size.base_steps, size.base_lr, size)
    base = latest_model(base_run)
    boost_run = train(out, "boosted", "lora", base, out / "shards" / "B", size.boost_steps, size.boost_lr, size)
    models = [f"base={base}", f"boosted={base}+{latest_adapter(boost_run)}"]
    results = {}
    for mode in ("gt_ortho", "gt4") if size.gt4 else ("gt_ortho",):
        for domain in ("B", "A"):
            results[(mode, domain)] = evaluate(out, mode, domain, models, size)
    rows = table(results)
    import resource

    meta = {"size": size_name, **size.__dict__, "verdict": verdict(rows), "seconds": time.perf_counter() - t0,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3),
            "splits_sha256": {d: {p: v["sha256"] for p, v in parts.items()} for d, parts in split["domains"].items()}}
    md = markdown(rows, meta)
    curves_png({"base (A, full)": base_run, "boosted (B, LoRA)": boost_run}, out / "curves.png")
    summary = {"meta": meta, "rows": rows, "models": models}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(md)
    (out / "report.html").write_text(report_html(out, md, results))
    log(f"done in {meta['seconds'] / 60:.1f} min: {out / 'summary.md'}, {out / 'curves.png'}, {out / 'report.html'}")
    print(md)
    return summary


def size_overrides(items: list[str], size, exclude: tuple = ()) -> dict:
    """``--set FIELD=VALUE`` items -> {field: value typed like ``size``'s field}; raises ValueError with the reason."""
    fields = [k for k in type(size).__dataclass_fields__ if k not in exclude]
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {fields}")
        kind = type(getattr(size, key))
        try:
            overrides[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        except ValueError:
            raise ValueError(f"--set {item!r}: {key} takes a {kind.__name__}") from None
    return overrides


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/boost_experiment.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/boost", help="output folder (a rerun resumes there)")
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"change one size field ({', '.join(Size.__dataclass_fields__)}), e.g. --set base_steps=800")
    a = p.parse_args(argv)
    try:
        overrides = size_overrides(a.overrides, SIZES[a.size])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run(Path(a.out), a.size, overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
