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
