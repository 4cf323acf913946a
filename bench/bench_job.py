"""Generation job throughput: the Ray job vs a plain in-process loop over the same stage objects, on the
same tiny smoke config and machine, and 1 vs 2 workers per actor stage.

    python bench/bench_job.py [--n 32]

Prints samples/s for each and the ratios (target: Ray / in-process >= 0.9). "Steady" counts items
between the first and the last finished item, so model loading and actor start-up (paid once per
actor on a cluster) are excluded; end-to-end numbers include them.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "ray_jobs" / "configs" / "generate_smoke.yaml"
ACTOR_STAGES = ("text_to_image", "era3d", "lgm", "render", "refine")


def in_process(n, out):
    from mvboost.pipeline.job import load_job_config, run_in_process

    cfg = load_job_config(SMOKE, [f"job.output={out}", f"job.n={n}", "job.progress=false"])
    s = run_in_process(cfg)
    return s.steady_items_per_s, s.accepted / s.wall_seconds


def on_ray(n, out, workers):
    """Runs the job on one local Ray; returns samples/s of the pipeline (after a warm-up run)."""
    code = f"""
import time, sys
sys.path.insert(0, {str(REPO)!r})
from ray_jobs.generate import run_on_ray
from mvboost.pipeline.job import load_job_config
sets = ["job.progress=false", "ray.num_cpus=2"] + [f"{{s}}.resources.max_actors={workers}" for s in {ACTOR_STAGES!r}]
run_on_ray(load_job_config({str(SMOKE)!r}, [f"job.output={out}-warm", "job.n=4", "job.shard_size=4"] + sets))
s = run_on_ray(load_job_config({str(SMOKE)!r}, [f"job.output={out}", "job.n={n}"] + sets))
print("RESULT", s.steady_items_per_s, s.accepted / s.wall_seconds)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT")]
    if not line:
        raise RuntimeError(r.stderr[-3000:])
    return float(line[0].split()[1]), float(line[0].split()[2])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mvboost-bench-"))
    os.environ.setdefault("MVBOOST_CACHE", str(tmp / "cache"))
    try:
        import torch

        torch.set_num_threads(2)
        in_process(4, tmp / "warm")  # builds the tiny models once
        base, base_e2e = in_process(args.n, tmp / "inproc")
        print(f"in-process loop: {base:.3f} samples/s steady ({base_e2e:.3f} end to end)", flush=True)
        one, one_e2e = on_ray(args.n, tmp / "ray1", 1)
        print(f"Ray job, 1 worker per stage: {one:.3f} samples/s steady = x{one / base:.2f} the in-process loop "
              f"({one_e2e:.3f} end to end, x{one_e2e / base_e2e:.2f}; includes actor start-up)", flush=True)
        two, two_e2e = on_ray(args.n, tmp / "ray2", 2)
        print(f"Ray job, up to 2 workers per stage: {two:.3f} samples/s steady = x{two / one:.2f} of 1 worker "
              f"({two_e2e:.3f} end to end; 2 CPU cores in all)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
