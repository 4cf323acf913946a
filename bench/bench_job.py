"""Generation job throughput: the Ray job vs a plain in-process loop over the same stage objects, on the
same tiny smoke config and machine, and 1 vs 2 workers per actor stage.

    python bench/bench_job.py [--n 32]

Prints end-to-end samples/s (start-up, model loading and actor start included) for the in-process loop
and for the Ray job with three layouts of the same stages, and the ratios (target: Ray / in-process
>= 0.9 end to end): "separate" (generate_smoke.yaml: an actor pool per model stage), "fused GPU group"
(generate_1gpu_smoke.yaml's layout: text-to-image + one [era3d, lgm, render, refine] worker) and "one
worker" (every model stage fused: one actor pool, the in-process loop's shape on Ray). Steady rates
are printed where the summary can measure them.
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


LAYOUTS = {
    "separate": [],
    "fused GPU group": ["job.stages=[text_to_image, matting, [era3d, lgm, render, refine], write]",
                        "era3d.resources.num_cpus=1"],
    "one worker": ["job.stages=[[text_to_image, matting, era3d, lgm, render, refine], write]",
                   "text_to_image.resources.num_cpus=1.5", "text_to_image.resources.batch_size=4"],
}


def in_process(n, out):
    from mvboost.pipeline.job import load_job_config, run_in_process

    cfg = load_job_config(SMOKE, [f"job.output={out}", f"job.n={n}", "job.progress=false"])
    s = run_in_process(cfg)
    return s.steady_items_per_s, s.accepted / s.wall_seconds


def on_ray(n, out, layout):
    """Runs the job on one local Ray (after a warm-up run that builds nothing new); end-to-end samples/s."""
    code = f"""
import time, sys
sys.path.insert(0, {str(REPO)!r})
from ray_jobs.generate import run_on_ray
from mvboost.pipeline.job import load_job_config
sets = ["job.progress=false", "ray.num_cpus=2"] + {LAYOUTS[layout]!r}
run_on_ray(load_job_config({str(SMOKE)!r}, [f"job.output={out}-warm", "job.n=4", "job.shard_size=4"] + sets))
s = run_on_ray(load_job_config({str(SMOKE)!r}, [f"job.output={out}", "job.n={n}"] + sets))
print("RESULT", s.steady_items_per_s, s.accepted / s.wall_seconds)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT")]
    if not line:
        raise RuntimeError(r.stderr[-3000:])
    steady, e2e = line[0].split()[1:3]
    return (None if steady == "None" else float(steady)), float(e2e)


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
        print(f"in-process loop: {base_e2e:.3f} samples/s end to end (steady {base})", flush=True)
        for i, layout in enumerate(LAYOUTS):
            steady, e2e = on_ray(args.n, tmp / f"ray{i}", layout)
            print(f"Ray job, {layout}: {e2e:.3f} samples/s end to end = x{e2e / base_e2e:.2f} the in-process loop "
                  f"(steady {steady})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
