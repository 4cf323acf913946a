"""Fault injection for the tests, installed through ``run.step_hook`` (the library has none of its own)."""
from __future__ import annotations

import os
from pathlib import Path


def worker_exits_once_after_step_3(step: int, ctx, metrics: dict) -> None:
    """Worker 1 (worker 0 in a one-worker run) dies after step 3, once per run folder: Ray Train must
    replace it and resume from the last checkpoint."""
    if step != 3 or ctx.rank != min(1, ctx.world - 1):
        return
    marker = Path(ctx.storage_dir) / f".injected-failure-{step}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("worker killed on purpose (tests.faults)\n")
    print(f"fault injection: worker {ctx.rank} exits at step {step}", flush=True)
    os._exit(1)


def record_node_and_pause_once_at_step_3(step: int, ctx, metrics: dict) -> None:
    """At step 3, once per run folder, every worker writes its Ray node id to ``.node-rank<rank>`` and waits up
    to 120 s: the window in which a test kills a node under a running step."""
    if step != 3:
        return
    marker = Path(ctx.storage_dir) / f".node-rank{ctx.rank}"
    if marker.exists():
        return
    import ray

    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(ray.get_runtime_context().get_node_id())
    print(f"fault injection: worker {ctx.rank} waits at step {step}", flush=True)
    import time

    time.sleep(120)
