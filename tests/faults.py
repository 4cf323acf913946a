"""Fault injection for the tests, installed through ``run.step_hook`` (the library has none of its own)."""
from __future__ import annotations


def record_node_and_pause_once_at_step_3(step: int, ctx, metrics: dict) -> None:
    """At step 3, once per run folder, every worker writes its Ray node id to ``.node-rank<rank>`` and waits up
    to 120 s: the window in which a test kills a node under a running step."""
    if step != 3:
        return
    fs, marker = _marker(ctx, f".node-rank{ctx.rank}")
    if fs.exists(marker):
        return
    import ray

    fs.pipe(marker, ray.get_runtime_context().get_node_id().encode())
    print(f"fault injection: worker {ctx.rank} waits at step {step}", flush=True)
    import time

    time.sleep(120)


def _marker(ctx, name: str):
    """(filesystem, path) of a marker file in the run's folder, local or on an object store."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(f"{ctx.storage_dir}/{name}", **ctx.storage_options)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    return fs, path
