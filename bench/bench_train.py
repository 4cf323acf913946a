"""Training step time: the real training step against a bare forward+render+loss+backward+AdamW loop on one
fixed batch, measured in the same run (target: the real step >= 0.7x the bare loop's throughput on a GPU),
plus a NaN check over every step.

    python bench/bench_train.py [--steps 6] [--shards DIR]                         # CPU, tiny LGM, in-process
    python bench/bench_train.py --ray --model random:lgm --device cuda --precision bf16 --lambda-lpips 0 \
        --steps 40 --out train.json                                                  # the GPU check's call (c)

The real step is the DeepSpeed loop (``mvboost.train.loop.train_loop``: shard streaming, LoRA, ZeRO-2),
in-process (``LocalContext``) or, with ``--ray``, inside Ray Train's ``TorchTrainer`` on the embedded Ray
(one worker, metrics of every step read back from the result). ``--lambda-lpips 0`` leaves LPIPS out (its
VGG weights, 57 MB, are left out of the 60 MiB training wheel set): say so next to the figure. Without
``--shards``, smoke shards are generated first (tiny models, CPU).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # train.launch, and bench.bench_train for the Ray workers' step hook
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


def make_shards(out: Path) -> Path:
    from mvboost.pipeline.job import load_job_config, run_in_process

    run_in_process(load_job_config(REPO / "ray_jobs/configs/generate_smoke.yaml",
                                   [f"job.output={out}", "job.n=4", "job.progress=false"]))
    return out


def real_steps(cfg, use_ray: bool) -> list[dict]:
    """Per-step metrics of the real loop (step_time, loss, …), in-process or through Ray Train."""
    if not use_ray:
        from mvboost.train.context import LocalContext
        from mvboost.train.loop import train_loop

        local = LocalContext(cfg, "cuda" if cfg.run.use_gpu else "cpu")
        train_loop(cfg, local.ctx)
        return local.history
    from ray_jobs.local_ray import connect
    from train.launch import build_trainer

    log = Path(cfg.run.storage_path) / "steps.jsonl"
    os.environ[STEP_LOG] = str(log)  # the embedded Ray's workers inherit it
    cfg.run.step_hook = "bench.bench_train:log_step"
    local = connect()
    result = build_trainer(cfg, local).fit()
    if result.error:
        raise SystemExit(f"training failed: {result.error}")
    return [json.loads(line) for line in log.read_text().splitlines()]


STEP_LOG = "MVBOOST_BENCH_STEP_LOG"


def log_step(step: int, ctx, metrics: dict) -> None:
    """``run.step_hook`` of the Ray Train run: rank 0 appends every step's metrics (Ray Train keeps only the
    reported results that carry a checkpoint in its result)."""
    if ctx.rank == 0:
        with open(os.environ[STEP_LOG], "a") as f:
            f.write(json.dumps({k: float(v) for k, v in metrics.items()}) + "\n")


def bare_step_seconds(cfg, shards: Path, steps: int, device: torch.device, dtype: torch.dtype) -> float:
    """The same model, LoRA, render and loss on one fixed batch: plain torch AdamW, no DeepSpeed, no data."""
    from mvboost.io.reader import list_shards
    from mvboost.metrics.lpips import load_lpips
    from mvboost.train.data import ShardStream
    from mvboost.train.loop import base_of, build_model
    from mvboost.train.loss import render_prediction, view_loss

    model = build_model(cfg, device).to(dtype)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    lp = load_lpips(cfg.train.lpips_net, device=device) if cfg.train.lambda_lpips > 0 else None
    batch = next(ShardStream(list_shards(str(shards)).urls).batches(cfg.deepspeed.micro_batch))
    x = base_of(model).prepare_inputs(batch["inputs"]).to(device, dtype)
    cams = [c.to(device) for c in batch["cameras"]]
    target, mask = batch["target"].to(device), batch["mask"].to(device)
    times = []
    for i in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        rgb, alpha = render_prediction(model(x).float(), cams)
        loss, _ = view_loss(rgb, alpha, target, mask, lp, cfg.train.lambda_lpips, cfg.train.lpips_size)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--shards")
    ap.add_argument("--model", default="tiny:lgm", help="model.checkpoint (random:lgm = LGM-big, random weights)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="deepspeed.precision: auto, bf16, fp16, fp32")
    ap.add_argument("--lambda-lpips", type=float, default=None, help="0: no LPIPS (say so with the figure)")
    ap.add_argument("--ray", action="store_true", help="the real step inside Ray Train (TorchTrainer, 1 worker)")
    ap.add_argument("--out", help="write the figures as JSON here")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 2)))
    tmp = Path(tempfile.mkdtemp(prefix="mvboost-bench-train-"))
    os.environ.setdefault("MVBOOST_CACHE", str(tmp / "cache"))
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    t0 = time.perf_counter()
    shards = Path(a.shards) if a.shards else make_shards(tmp / "shards")
    print(f"shards ready in {time.perf_counter() - t0:.1f} s", flush=True)

    from mvboost.config import load_config
    from mvboost.train.config import TrainConfig

    overrides = [f"data.source={shards}", f"run.storage_path={tmp}/runs", f"train.steps={a.steps}",
                 f"train.checkpoint_every={10 ** 6}", "train.log_every=1", f"model.checkpoint={a.model}",
                 f"deepspeed.precision={a.precision}", "run.num_workers=1", f"run.use_gpu={device.type == 'cuda'}"]
    if a.lambda_lpips is not None:
        overrides.append(f"train.lambda_lpips={a.lambda_lpips}")
    cfg = load_config(TrainConfig, REPO / "train/configs/lora_smoke.yaml", overrides)
    t0 = time.perf_counter()
    hist = real_steps(cfg, a.ray)
    real_wall = time.perf_counter() - t0
    losses = [float(h["loss"]) for h in hist]
    steady = [float(h["step_time"]) for h in hist[1:]] or [float(hist[0]["step_time"])]  # step 1 pays warm-up
    full = statistics.median(steady)
    prec = a.precision if a.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec, torch.float32)
    bare = bare_step_seconds(cfg, shards, max(3, min(a.steps, 12)), device, dtype)
    keys = [k for k in ("data", "forward", "render", "loss", "backward") if f"time_{k}" in hist[-1]]
    split = {k: statistics.median(float(h[f"time_{k}"]) for h in hist[1:] or hist) for k in keys}
    rec = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "model": a.model,
           "precision": prec, "zero_stage": cfg.deepspeed.zero_stage, "lambda_lpips": cfg.train.lambda_lpips,
           "through_ray_train": a.ray, "steps": len(hist), "real_step_s": round(full, 4), "bare_step_s": round(bare, 4),
           "ratio_real_to_bare_throughput": round(bare / full, 3),
           "split_s": {k: round(v, 4) for k, v in split.items()}, "all_losses_finite": all(map(math.isfinite, losses)),
           "first_loss": losses[0], "last_loss": losses[-1], "real_run_wall_s": round(real_wall, 1)}
    print("step time split (median): " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in split.items())
          + f"; total {full * 1000:.0f} ms")
    print(f"bare loop {bare * 1000:.0f} ms/step -> real step throughput = x{bare / full:.2f} of the bare loop "
          f"({'Ray Train + ' if a.ray else ''}DeepSpeed ZeRO-{cfg.deepspeed.zero_stage}, {prec}, "
          f"lambda_lpips {cfg.train.lambda_lpips}); {len(hist)} steps, every loss finite: {rec['all_losses_finite']}")
    if a.out:
        Path(a.out).write_text(json.dumps(rec, indent=1))
    return 0 if rec["all_losses_finite"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
