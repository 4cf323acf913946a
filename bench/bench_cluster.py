"""Scale simulation on a multi-node Ray with 8 declared GPUs (targets in brackets):

    python bench/bench_cluster.py [--n 500 2000] [--scale 0.2] [--batch 8] [--node-cpus 16]

A local cluster (``ray_jobs.local_cluster``): a head without GPUs and 4 worker nodes declaring 2 GPUs and 16 CPUs
each (the ``mvboost_gpu`` node group; the CPU:GPU ratio of the g6e nodes in ``cluster/aws.yaml``), token auth,
loopback. The job runs the synthetic load-test stage in place of the GPU chain, as an actor pool of one actor per
GPU, as the fused GPU group runs (a GPU *task* would get a new worker process per batch in Ray): per item it holds
one GPU for ``scale`` x the H100 GPU time of one object (``docs/gpu.md``, bf16: Era3D 40 steps x
0.084 s + SDEdit refinement 38 steps x 0.084 s + LGM-big 1/115 s + 6 views of gsplat at 512² (1/7,800 s each) +
VAE decode 2 x 0.175 s = 6.91 s; the fused group is > 99 % of it, text-to-image (not measured) is left out), then
the shard writer. The default scale (0.2: 1.38 s per item, ideal 5.8 items/s) runs both sizes in about 9 minutes.
Reported per n:

- achieved items/s against the ideal the declared GPUs allow (8 GPUs / per-item GPU time) [>= 0.9 at n >= 2,000],
  end to end (with Ray's connection and the job's set-up) and over the span of the synthetic work;
- driver peak RSS (psutil, every 0.2 s) [flat within 10 % between n = 500 and 2,000];
- object-store spill (the cluster's memory summary) [none];
- per-node busy: the summed run time of the synthetic actor tasks on each node (Ray's task state API) over the
  span, against its 2 GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: H100 GPU seconds per object of the production chain (gpu_notes.md; see the module docstring)
H100_SECONDS = 40 * 0.084 + 38 * 0.084 + 1 / 115 + 6 / 7800 + 2 * 0.175
GPUS, NODES = 8, 4


def run_job(cluster, n: int, seconds: float, batch: int, out: Path) -> dict:
    from bench_scale import peak_rss

    cmd = [sys.executable, "-m", "ray_jobs.generate", "--config", str(REPO / "ray_jobs/configs/generate_smoke.yaml"),
           "--n", str(n), "--output", str(out), "--set", "job.stages=[synthetic, write]",
           "--set", "job.shard_size=100", "--set", "synthetic.bytes=20000", "--set", f"synthetic.seconds={seconds}",
           "--set", f"synthetic.resources.batch_size={batch}", "--set", "synthetic.resources.num_gpus=1",
           "--set", "synthetic.resources.num_cpus=0.1", "--set", "synthetic.resources.custom={mvboost_gpu: 1}",
           "--set", "synthetic.actor=true", "--set", f"synthetic.resources.min_actors={GPUS}",
           "--set", f"synthetic.resources.max_actors={GPUS}",
           "--set", "write.resources.batch_size=50", "--set", "write.resources.num_cpus=0.25",
           "--set", "job.progress=false", "--set", "job.commit_cpus=0.25"]
    env = dict(cluster.env, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    wall, rss, rc, tail = peak_rss(cmd, env)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    return {"n": n, "wall_s": wall, "driver_peak_rss_mib": rss, "rc": rc, "tail": tail if rc else "",
            "summary": summary}


def task_busy(cluster) -> tuple[dict[str, float], float, str]:
    """(node id -> summed seconds of synthetic tasks, first start to last end in s, the memory summary) of the
    newest job on the cluster."""
    import ray
    from ray.util.state import list_actors, list_jobs, list_tasks

    ray.init(address=cluster.address, log_to_driver=False)
    try:
        me = ray.get_runtime_context().get_job_id()  # this process is a driver job too: the newest other one
        jobs = sorted((j for j in list_jobs() if j.type == "DRIVER" and j.job_id and j.job_id != me),
                      key=lambda j: j.start_time or 0)
        job = jobs[-1].job_id
        busy: dict[str, float] = {}
        starts, ends = [], []
        # an actor task's own record may not name its node: its actor's does
        actors = list_actors(filters=[("job_id", "=", job)], detail=True, limit=10_000, raise_on_missing_output=False)
        actor_node = {a.actor_id: a.node_id for a in actors}
        for t in list_tasks(filters=[("job_id", "=", job)], detail=True, limit=10_000, raise_on_missing_output=False):
            if "synthetic" not in (t.name or "") or not t.start_time_ms or not t.end_time_ms:
                continue
            node = t.node_id or actor_node.get(t.actor_id) or "?"
            busy[node] = busy.get(node, 0.0) + (t.end_time_ms - t.start_time_ms) / 1000
            starts.append(t.start_time_ms)
            ends.append(t.end_time_ms)
        from ray._private.internal_api import memory_summary

        mem = memory_summary(cluster.address, stats_only=True)
        return busy, (max(ends) - min(starts)) / 1000 if starts else 0.0, mem
    finally:
        ray.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spilled_mib(mem: str) -> float:
    m = re.search(r"Spilled ([\d.]+) MiB", mem)
    return float(m.group(1)) if m else 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="*", default=[500, 2000])
    ap.add_argument("--scale", type=float, default=0.2, help="simulated seconds per H100 second")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--node-cpus", type=int, default=16,
                    help="CPUs each worker node declares (a g6e node has 8 vCPUs per GPU); Ray keeps about that many "
                         "idle workers per node before it stops them")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args(argv)
    from ray_jobs.local_cluster import LocalCluster

    seconds = H100_SECONDS * a.scale
    ideal = GPUS / seconds
    print(f"per item: {H100_SECONDS:.2f} H100 s x {a.scale} = {seconds * 1000:.1f} ms on one GPU; "
          f"ideal {ideal:.1f} items/s on {GPUS} GPUs")
    rows = []
    with tempfile.TemporaryDirectory() as d, \
            LocalCluster(workers=NODES, worker_gpus=GPUS // NODES, worker_cpus=a.node_cpus, head_cpus=1,
                         resources={"mvboost_gpu": GPUS // NODES}, token_file=Path(d) / "token",
                         object_store_mb=200, log=Path(d) / "cluster.log", dashboard_port=free_port()) as cluster:
        os.environ.update(cluster.env)  # token auth and loopback for this process's driver, before Ray's import
        for n in a.n:
            r = run_job(cluster, n, seconds, a.batch, Path(d) / f"out-{n}")
            try:
                busy, span, mem = task_busy(cluster)
            except Exception as e:  # noqa: BLE001 - the job's figures stand without the state API's
                print(f"(task state unavailable: {type(e).__name__}: {str(e)[:200]})")
                busy, span, mem = {}, 0.0, ""
            s = r["summary"]
            achieved = n / r["wall_s"]
            steady = n / span if span else 0.0
            r.update(achieved_items_s=achieved, ratio=achieved / ideal, synthetic_span_s=span,
                     steady_ratio=steady / ideal, spilled_mib=spilled_mib(mem),
                     node_busy={k[:8]: round(v / span / (GPUS // NODES), 3) if span else 0 for k, v in busy.items()},
                     accepted=s.get("accepted"))
            rows.append(r)
            print(f"n={n:,}: wall {r['wall_s']:.1f} s (incl. Ray start-up and the job's set-up), "
                  f"{achieved:.1f} items/s = {r['ratio']:.2f} of ideal; synthetic span {span:.1f} s -> "
                  f"{steady:.1f} items/s = "
                  f"{r['steady_ratio']:.2f} of ideal [>= 0.9 at n >= 2,000]; driver peak RSS "
                  f"{r['driver_peak_rss_mib']:.0f} MiB; spilled {r['spilled_mib']:.0f} MiB [0]; accepted "
                  f"{r['accepted']}; per-node busy (share of its 2 GPUs over the span) {r['node_busy']}"
                  + (f"\n{r['tail']}" if r["rc"] else ""))
            time.sleep(1)
    if len(rows) > 1:
        peaks = [r["driver_peak_rss_mib"] for r in rows]
        print(f"driver peak RSS spread {100 * (max(peaks) - min(peaks)) / min(peaks):.1f} % [<= 10 %]")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
