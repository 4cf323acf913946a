"""Scale-out figures on this machine (issue targets in brackets):

    python bench/bench_scale.py [--skip-rss] [--rss-n 100 10000]

1. ``--dry-run`` at n = 100,000 (production layout, random models): seconds and peak RSS [< 30 s, < 1 GiB];
2. driver peak RSS of the Ray job with the synthetic load-test stage (``job.stages=[synthetic, write]``,
   200 kB per item) at n = 100 and n = 10,000 [flat, within 10 %], sampled every 0.2 s with psutil;
3. shard commit throughput (staged items -> shard tar + manifest) against writing the same members with
   ``tarfile`` straight to the same disk [>= 0.8x].
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def peak_rss(cmd: list[str], env: dict) -> tuple[float, float, int, str]:
    """(seconds, peak RSS of that process in MiB, return code, output tail)."""
    import psutil

    t = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    out: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    reader.join()
    return time.time() - t, peak / 2 ** 20, proc.returncode, "".join(out)[-1500:]


def env() -> dict:
    e = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    e.pop("RAY_ADDRESS", None)
    return e


def bench_dry_run(tmp: Path) -> None:
    cmd = [sys.executable, "-m", "ray_jobs.generate", "--config",
           str(REPO / "ray_jobs/configs/generate_gpu_random.yaml"),
           "--n", "100000", "--set", "job.shard_size=100", "--output", str(tmp / "dry"), "--dry-run"]
    s, rss, rc, tail = peak_rss(cmd, env())
    print(f"dry run n=100,000: {s:.1f} s, peak RSS {rss:.0f} MiB (rc {rc}) [target < 30 s, < 1024 MiB]")
    print("   " + "\n   ".join(tail.strip().splitlines()[:3]))


def bench_driver_rss(tmp: Path, ns: list[int]) -> None:
    peaks = {}
    for n in ns:
        cmd = [sys.executable, "-m", "ray_jobs.generate", "--config",
               str(REPO / "ray_jobs/configs/generate_smoke.yaml"),
               "--n", str(n), "--output", str(tmp / f"rss-{n}"), "--set", "job.stages=[synthetic, write]",
               "--set", "job.shard_size=100", "--set", "synthetic.bytes=200000", "--set", "job.progress=false",
               "--set", "synthetic.resources.batch_size=16", "--set", "write.resources.batch_size=16",
               "--set", "synthetic.resources.num_cpus=0.5", "--set", "write.resources.num_cpus=0.5"]
        s, rss, rc, tail = peak_rss(cmd, env())
        peaks[n] = rss
        print(f"driver n={n:,}: {s:.1f} s, peak RSS {rss:.0f} MiB (rc {rc}), {n * 0.2:.0f} MB of payload")
        if rc:
            print(tail)
    lo, hi = min(peaks.values()), max(peaks.values())
    print(f"driver peak RSS spread {100 * (hi - lo) / lo:.1f} % over n = {', '.join(map(str, ns))} [target <= 10 %]")


def bench_commit(tmp: Path, items: int = 64, size: int = 1_000_000, repeat: int = 5) -> None:
    import numpy as np

    from mvboost.io.sample import tar_members
    from mvboost.io.shards import OutputStore

    rng = np.random.default_rng(0)
    samples = {f"k{i:04d}": {"payload.bin": rng.bytes(size), "meta.json": b"{}"} for i in range(items)}
    total = sum(len(b) for f in samples.values() for b in f.values())
    commit_s, raw_s = [], []
    for r in range(repeat):
        store = OutputStore(str(tmp / f"commit-{r}"))
        for k, f in samples.items():
            store.stage_sample(0, k, f)
        os.sync()
        t = time.perf_counter()
        store.commit_shard(0, sorted(samples))
        os.sync()
        commit_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        with open(tmp / f"raw-{r}.tar", "wb") as fh, tarfile.open(fileobj=fh, mode="w") as tf:
            for k in sorted(samples):
                for name, data in tar_members(k, samples[k]).items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        os.sync()
        raw_s.append(time.perf_counter() - t)
    c, w = min(commit_s), min(raw_s)
    print(f"shard commit: {total / c / 1e6:.0f} MB/s vs raw tar write {total / w / 1e6:.0f} MB/s = "
          f"x{w / c:.2f} [target >= 0.8] ({items} items of {size / 1e6:.1f} MB, best of {repeat})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--rss-n", type=int, nargs="*", default=[100, 10_000])
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bench_commit(tmp)
        bench_dry_run(tmp)
        if not a.skip_rss:
            bench_driver_rss(tmp, a.rss_n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
