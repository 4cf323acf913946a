"""The MVBoost generation job on Ray Data.

    python -m ray_jobs.generate --config ray_jobs/configs/generate_smoke.yaml [--output URL] [--n N]
                                [--set key=value ...]

With no cluster address (``ray.address`` unset and no ``RAY_ADDRESS``) it starts a local Ray on
127.0.0.1; under ``ray job submit --address … --working-dir . -- python -m ray_jobs.generate …`` it
joins that cluster unchanged.

Execution: the pending items (those not finished by an earlier run) stream through the configured
stage list. Each entry of ``job.stages`` is one Ray Data operator: a stage, or a fused group of
stages (``[era3d, lgm, render, refine]``) that runs in one worker with the resources of its first
member, sharing loaded models (one Era3D per GPU for generation and refinement). Operators that load
weights (``uses_actor``) run as actor pools (``ActorPoolStrategy(min_size, max_size)``, ``num_gpus``
fraction and batch size from config; ``max_actors: 0`` = as many as the cluster has room for), so
weights load once per actor; the others run as tasks. Ray Data streams with backpressure. The last
stage writes each finished item to the output's staging area from the worker and returns only status
rows; as soon as a shard's last item is in, the driver has a Ray task commit it where the data is
(tar, rejects, manifest last).

Before any work the layout is checked against the cluster's nodes
(:mod:`mvboost.pipeline.layout`): pools whose ``min_actors`` cannot all start at once fail with a
message naming the stages and resources, instead of waiting forever.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from ray_jobs.operators import from_ray, map_batches_args, to_ray

log = logging.getLogger("ray_jobs.generate")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m ray_jobs.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="job YAML (see ray_jobs/configs/)")
    p.add_argument("--output", help="output URL (local path, s3://…); overrides job.output")
    p.add_argument("--n", type=int, help="number of objects; overrides job.n")
    p.add_argument("--assets", metavar="URL",
                   help="render shards from the 3D assets under URL instead of generating from prompts (sets "
                        "prompts.source=assets; GSO-layout folders and/or OBJ/GLB files; see configs/assets.yaml)")
    p.add_argument("--images", metavar="URL",
                   help="generate from the single-view images under URL (a folder or fsspec URL of .png/.jpg/.webp "
                        "and/or img2dataset .tar shards; sets prompts.source=images; see configs/images.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set text_to_image.steps=2 (repeatable)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve the local run's Prometheus metrics on 127.0.0.1:PORT and write Prometheus's service "
                        "discovery file (sets ray.metrics_port; see docs/cluster.md)")
    p.add_argument("--retry-rejected", nargs="?", const="all", metavar="GROUP",
                   help="run the output's recorded rejects again (all, or one stage, reason group or "
                        "'<stage>: <reason group>' as the summary lists them) into new shards; rerun the same "
                        "command to finish an interrupted retry (sets job.retry_rejected)")
    p.add_argument("--in-process", action="store_true", help="run the same stage list without Ray (debugging)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (items, shards, what a rerun skips, operators, resources, models) and exit; "
                        "runs no model, starts no Ray, writes nothing")
    return p.parse_args(argv)


def load(args):
    from mvboost.pipeline.job import load_job_config

    overrides = list(args.overrides)
    if args.output:
        overrides.append(f"job.output={args.output}")
    if args.n is not None:
        overrides.append(f"job.n={args.n}")
    if args.retry_rejected:
        overrides.append(f"job.retry_rejected={json.dumps(args.retry_rejected)}")  # "stage: group" is no YAML map
    if args.metrics_port is not None:
        overrides.append(f"ray.metrics_port={args.metrics_port}")
    if args.assets:
        overrides += ["prompts.source=assets", f"prompts.assets={args.assets}"]
    if args.images:
        overrides += ["prompts.source=images", f"prompts.images={json.dumps(args.images)}"]
    return load_job_config(args.config, overrides)


# ---- Ray adapters (the only Ray-specific code around the library's stages) -------------------
def run_unit(stage, batch: dict) -> dict:
    """Run a stage or fused group on a Ray batch, counting items in and out of every stage for the live metrics."""
    from ray_jobs.metrics import StageMetrics

    return to_ray(stage.run(from_ray(batch), StageMetrics.get()))


class StageActor:
    """Holds one stage (or fused group): ``setup()`` (weights) runs once per actor."""

    def __init__(self, unit):
        from ray_jobs.metrics import StageMetrics

        logging.basicConfig(level=logging.WARNING)
        self.stage = unit  # built on the driver (names, resources, job): only setup() runs here
        _limit_threads(self.stage.resources.num_cpus)
        if StageMetrics.get() is not None:
            StageMetrics.get().register(unit.names)
        self.stage.ensure_setup()
        self.retiring = ""

    def __call__(self, batch):
        if self.retiring:  # the previous batch hit an infrastructure error: this worker may be broken
            retire(self.stage.name, self.retiring)
        out = run_unit(self.stage, batch)
        self.retiring = self.stage.unhealthy  # its failed items are on their way back to the driver
        return out


def retire(name: str, why: str) -> None:
    """End this actor's process: Ray Data restarts the actor (``max_restarts``) and retries the batch it was
    given on a fresh one, so a worker with a broken CUDA context stops taking items."""
    import os

    print(f"worker of {name} (pid {os.getpid()}) retires after an infrastructure error ({why[:200]}); "
          "Ray restarts it", file=sys.stderr, flush=True)
    os._exit(70)


def _limit_threads(num_cpus: float) -> None:
    """One torch thread per reserved CPU (at least one): pools sharing a node must not oversubscribe it."""
    import torch

    torch.set_num_threads(max(1, int(num_cpus)))


def run_stage_task(batch, unit):
    _limit_threads(unit.resources.num_cpus)
    return run_unit(unit, batch)


def commit_shard_task(output: str, storage_options: dict, shard: int, keys: list[str], seconds: dict) -> int:
    """Runs on a worker: merge the shard's staged items into its tar, then rejects, then the manifest."""
    from mvboost.io.shards import OutputStore

    OutputStore(output, storage_options).commit_shard(shard, keys, seconds)
    return shard


class RayCommitter:
    """Commits each finished shard in a Ray task, so the driver never reads a payload. A commit is
    idempotent (a committed shard is left alone, an interrupted one is rewritten with the same bytes),
    so a task lost with its worker is retried. At most ``max_inflight`` commits run at once."""

    def __init__(self, output: str, storage_options: dict, num_cpus: float, max_inflight: int = 8, on_done=None):
        import ray

        self.ray = ray
        self.fn = ray.remote(num_cpus=num_cpus, max_retries=3)(commit_shard_task)
        self.output, self.opts, self.max_inflight = output, dict(storage_options), max_inflight
        self.on_done = on_done  # called with each shard whose commit has finished (the metrics count it then)
        self.inflight: list = []

    def _collect(self, done: list) -> None:
        for shard in self.ray.get(done):
            if self.on_done is not None:
                self.on_done(shard)

    def submit(self, shard: int, keys: list[str], seconds: dict) -> None:
        self.inflight.append(self.fn.remote(self.output, self.opts, shard, keys, seconds))
        ready, self.inflight = self.ray.wait(self.inflight, num_returns=len(self.inflight), timeout=0)
        self._collect(ready)
        while len(self.inflight) > self.max_inflight:
            done, self.inflight = self.ray.wait(self.inflight, num_returns=1)
            self._collect(done)

    def wait(self) -> None:
        inflight, self.inflight = self.inflight, []
        self._collect(inflight)


MAX_BLOCKS = 1000


def num_blocks(pending: int, units) -> int:
    """Input blocks: about one per smallest batch, at most MAX_BLOCKS (100k items -> 1,000 blocks of 100:
    Ray Data plans 50,000 one-batch blocks in ~95 s, 1,000 in ~2.5 s; batches still follow batch_size)."""
    block = max(1, min(u.resources.batch_size for u in units))
    return max(1, min(MAX_BLOCKS, -(-pending // block)))


def named_actor(name: str) -> type:
    """A StageActor subclass named after the stage, so Ray Data's operators, progress bars, dashboard and
    Prometheus ``operator`` labels read ``MapBatches(era3d+lgm+render+refine)``, not StageActor."""
    return type(name, (StageActor,), {"__module__": __name__, "__qualname__": name})


def named_task(name: str):
    def task(batch, unit):
        return run_stage_task(batch, unit)

    task.__name__ = task.__qualname__ = name
    return task


def check_cluster_layout(cfg, units, local: bool) -> None:
    """Refuse (or warn about) a layout whose actor pools cannot all start on the cluster's nodes."""
    import ray

    from mvboost.pipeline.layout import Demand, LayoutError, check_layout
    from mvboost.pipeline.units import layout_units

    mode = cfg.ray.check_layout
    if mode == "off":
        return

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    commits = Demand("shard commits", 0.0, cfg.job.commit_cpus, 1, False)
    try:
        check_layout(layout_units(units) + [commits], nodes)
    except LayoutError as e:
        if mode == "strict" or (mode == "auto" and local):
            raise
        log.warning("%s (going on: an autoscaler may add nodes; set ray.check_layout=strict to refuse)", e)


def init_ray(cfg) -> bool:
    """Join the configured cluster, or start the embedded loopback-only Ray. True when local."""
    from ray_jobs.local_ray import connect

    return connect(cfg.ray.address, num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus)


class JobStalled(RuntimeError):
    """Ray Data made no progress for ``ray.no_progress_timeout_s`` (e.g. GPU capacity that never came)."""


def build_dataset(ray, cfg, units, items: list[dict]):
    """The job's stage list as Ray Data operators over ``items``: actor pools for units that load weights,
    tasks for the others."""
    from ray.data import ActorPoolStrategy

    ds = ray.data.from_items(items, override_num_blocks=num_blocks(len(items), units))
    for unit in units:
        res = unit.resources
        if unit.uses_actor:
            ds = ds.map_batches(named_actor(unit.name), fn_constructor_args=(unit,),
                                compute=ActorPoolStrategy(
                                    min_size=res.min_actors, max_size=res.max_actors or None,
                                    max_tasks_in_flight_per_actor=cfg.ray.max_tasks_in_flight_per_actor),
                                **map_batches_args(res))
        else:
            ds = ds.map_batches(named_task(unit.name), fn_args=(unit,), **map_batches_args(res))
    return ds


def run_on_ray(cfg):
    import ray
    from ray.data import DataContext
    from tqdm.auto import tqdm

    from mvboost.pipeline.job import JobState, gpu_shares, stage_names

    state = JobState(cfg)  # validates output, plan and resume state before any Ray work
    if not state.pending and not state.tracker.ready():
        return state.finish()  # a finished output: nothing to run, no Ray to start
    units = state.units
    for u in units:
        u.preflight()  # e.g. a missing model fails here, once, with a clear message
    local = init_ray(cfg)
    check_cluster_layout(cfg, units, local)
    from ray_jobs.metrics import GpuHeldSampler, JobMetrics, publish_final, serve_metrics

    metrics = JobMetrics(stage_names(units), gpu_shares(units), cfg.job.gpu_hour_usd)
    endpoint = serve_metrics(cfg.ray.metrics_port, local, metrics.job_id)
    state.committer = RayCommitter(cfg.job.output, cfg.job.storage_options, cfg.job.commit_cpus,
                                   on_done=metrics.shard)
    state.commit_ready()  # shards an earlier run finished but did not commit: committed by Ray tasks too
    metrics.pending(len(state.pending))
    sampler = GpuHeldSampler(on_sample=metrics.held).start()
    stalled = None  # the operators still running when Ray Data gave up (ray.no_progress_timeout_s)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = bool(cfg.job.progress)
    if cfg.ray.no_progress_timeout_s:
        ctx.execution_no_progress_timeout_s = cfg.ray.no_progress_timeout_s
    from ray.data.exceptions import ExecutionTimeoutError

    left = len(state.pending)
    with tqdm(total=len(state.items), initial=state.skipped, desc="items done",
              disable=not cfg.job.progress) as bar:
        for items in state.rounds():  # the pending items, then those an infrastructure failure sent back
            try:
                for batch in build_dataset(ray, cfg, units, items).iter_batches(batch_size=None, batch_format="numpy"):
                    n = state.consume(batch, on_row=metrics.item)
                    left -= n
                    metrics.pending(left)
                    bar.update(n)
            except ExecutionTimeoutError as e:
                stalled = [ln.strip()[2:].split(":")[0] for ln in str(e).splitlines() if ln.startswith("  - ")]
                break
    state.committer.wait()  # a stalled run keeps the shards already handed to commits too
    state.gpu_seconds_held = sampler.stop()
    if stalled is not None:
        publish_final(metrics, endpoint, cfg.ray.metrics_wait_s)
        raise JobStalled(f"stopped: nothing moved for {ctx.execution_no_progress_timeout_s:.0f} s "
                         f"(ray.no_progress_timeout_s; still running: {', '.join(stalled) or '?'}), "
                         f"{left} of {len(state.pending)} items not done; the committed shards are kept: "
                         "run the same command again to finish")
    try:
        return state.finish()
    finally:  # also when items are left unfinished (JobIncomplete): the counts so far are exact
        publish_final(metrics, endpoint, cfg.ray.metrics_wait_s)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from mvboost.config import ConfigError
    from mvboost.io.shards import OutputError
    from mvboost.pipeline.state import JobIncomplete

    args = parse_args(argv)
    try:
        cfg = load(args)
        if args.dry_run:
            from mvboost.pipeline.dryrun import dry_run

            text, problems = dry_run(cfg)
            print(text)
            return 2 if problems else 0
        print(f"output: {cfg.job.output}", flush=True)
        if args.in_process:
            from mvboost.pipeline.job import run_in_process

            summary = run_in_process(cfg)
        else:
            summary = run_on_ray(cfg)
    except (ConfigError, OutputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (JobStalled, JobIncomplete) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
