"""LoRA training step time: the full loop (DeepSpeed, shard streaming) split into data / forward / render /
loss / backward, against a bare forward+render+loss+backward+AdamW loop on one fixed batch, measured
in the same run (ratio target >= 0.7 on a GPU).

    python bench/bench_train.py [--steps 6] [--shards DIR]

Without --shards, smoke shards are generated first (tiny models, CPU). On a GPU, pass
--set-like options via the config in the code: model.checkpoint and run.use_gpu (LGM-big random weights
need a local file: see README).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def make_shards(out: Path) -> Path:
    from mvboost.pipeline.job import load_job_config, run_in_process

    run_in_process(load_job_config(REPO / "ray_jobs/configs/generate_smoke.yaml",
                                   [f"job.output={out}", "job.n=4", "job.progress=false"]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--shards")
    a = ap.parse_args()
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="mvboost-bench-train-"))
    os.environ.setdefault("MVBOOST_CACHE", str(tmp / "cache"))
    shards = Path(a.shards) if a.shards else make_shards(tmp / "shards")

    from mvboost.config import load_config
    from mvboost.metrics.lpips import load_lpips
    from mvboost.train.data import ShardStream, list_shards
    from mvboost.train.loop import LocalContext, TrainConfig, build_model, train_loop
    from mvboost.train.loss import lgm_loss, render_prediction

    cfg = load_config(TrainConfig, REPO / "train/configs/lora_smoke.yaml",
                      [f"data.source={shards}", f"run.storage_path={tmp}/runs", f"train.steps={a.steps}",
                       f"train.checkpoint_every={10 ** 6}", "train.log_every=1"])
    local = LocalContext(cfg)
    train_loop(cfg, local.ctx)
    hist = local.history[1:]  # the first step pays warm-up
    keys = ["data", "forward", "render", "loss", "backward"]
    split = {k: statistics.median(h[f"time_{k}"] for h in hist) for k in keys}
    full = statistics.median(h["step_time"] for h in hist)
    # bare loop: same model, LoRA, render and loss on one fixed batch, plain torch AdamW, no DeepSpeed/data
    model = build_model(cfg, "cpu")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    lp = load_lpips(cfg.train.lpips_net)
    batch = next(ShardStream(list_shards(str(shards)).urls).batches(cfg.deepspeed.micro_batch))
    x = model.base_model.model.prepare_inputs(batch["inputs"])
    times = []
    for i in range(a.steps):
        t = time.perf_counter()
        rgb, alpha = render_prediction(model(x), batch["cameras"])
        loss, _ = lgm_loss(rgb, alpha, batch["target"], batch["mask"], lp, cfg.train.lambda_lpips,
                           cfg.train.lpips_size)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    bare = statistics.median(times)
    print("step time split (CPU, tiny LGM, micro-batch 1, median): " +
          ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in split.items()) + f"; total {full * 1000:.0f} ms")
    print(f"bare loop {bare * 1000:.0f} ms/step -> full loop throughput = x{bare / full:.2f} of the bare loop")


if __name__ == "__main__":
    main()
