"""Boost LGM with LoRA on the generated shards, on Ray Train (TorchTrainer + DeepSpeed inside the loop).

    python -m train.launch --config train/configs/lora_smoke.yaml [--data URL] [--output URL] [--set k=v …]

``--output`` is the RunConfig storage path (any fsspec/pyarrow filesystem); re-running with the same
run name and storage resumes from the latest reported checkpoint (Ray Train V2). Workers lost mid-run
are replaced (FailureConfig) and training continues from the last checkpoint. Also runs unchanged as
``ray job submit --working-dir . -- python -m train.launch …``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import sys

#: Ray Train's print patch (on by default) logs every worker print and, since Ray core wraps a worker's stdout,
#: also prints it: each line of the loop reached the console twice. Off, a print is a plain print, shown once.
PRINT_PATCH = "RAY_TRAIN_ENABLE_PRINT_PATCH"


def _worker(config: dict):
    """Ray Train worker entry point: rebuild the config, adapt Ray's context, run the shared loop."""
    import ray.train
    import torch

    from mvboost.config import from_dict
    from mvboost.train.config import TrainConfig
    from mvboost.train.context import LoopContext, load_step_hook
    from mvboost.train.loop import train_loop

    cfg = from_dict(TrainConfig, config)
    tc = ray.train.get_context()
    device = torch.device("cuda", torch.cuda.current_device()) if cfg.run.use_gpu and torch.cuda.is_available() \
        else torch.device("cpu")
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // max(1, tc.get_local_world_size())))
    ckpt = ray.train.get_checkpoint()

    upload = upload_args(cfg.run.checkpoint_upload)

    def report(metrics, checkpoint_dir):
        if not checkpoint_dir:
            ray.train.report(metrics)
            return
        try:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir), **upload)
        finally:
            if not upload:  # a synchronous upload is done: the local copy goes (async: Ray removes it once uploaded)
                shutil.rmtree(checkpoint_dir, ignore_errors=True)

    storage = run_folder(cfg.run)  # made absolute by main()
    # The checkpoint to resume from, read in place where the storage is local; a remote one is downloaded once per
    # node and the copy removed when the loop ends (a bare to_directory() left a full copy in /tmp on every resume).
    with (ckpt.as_directory() if ckpt is not None else contextlib.nullcontext()) as ckpt_dir:
        train_loop(cfg, LoopContext(tc.get_world_rank(), tc.get_world_size(), device, ckpt_dir, report, storage,
                                    load_step_hook(cfg.run.step_hook), dict(cfg.run.storage_options)))


def run_folder(run) -> str:
    """The run's folder under ``run.storage_path`` (a path or URL), where Ray Train keeps its checkpoints."""
    return f"{run.storage_path.rstrip('/')}/{run.name}"


def upload_args(mode: str) -> dict:
    """``ray.train.report`` arguments for ``run.checkpoint_upload``: an asynchronous upload (Ray removes the local
    folder once it is uploaded) where the installed Ray has ``CheckpointUploadMode``; {}: a synchronous one."""
    import ray.train

    if mode == "async" and hasattr(ray.train, "CheckpointUploadMode"):
        return {"checkpoint_upload_mode": ray.train.CheckpointUploadMode.ASYNC,
                "delete_local_checkpoint_after_upload": True}
    return {}


def worker_resources(run) -> dict | None:
    """Ray Train's resources per worker: one CPU (or GPU) as by default, plus ``run.resources_per_worker``."""
    if not run.resources_per_worker:
        return None
    return {("GPU" if run.use_gpu else "CPU"): 1, **run.resources_per_worker}


def build_trainer(cfg, local: bool = False):
    """The TorchTrainer; ``local``: the embedded single-node Ray, whose process group needs no listener."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from train.local_group import LocalTorchConfig

    return TorchTrainer(
        _worker, train_loop_config=dataclasses.asdict(cfg),
        scaling_config=ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu,
                                     placement_strategy=cfg.run.placement_strategy,
                                     resources_per_worker=worker_resources(cfg.run)),
        torch_config=(LocalTorchConfig if local else TorchConfig)(backend="nccl" if cfg.run.use_gpu else "gloo"),
        run_config=RunConfig(name=cfg.run.name, **storage_args(cfg.run),
                             failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.num_to_keep),
                             worker_runtime_env={"env_vars": {PRINT_PATCH: "0"}}),
    )


def storage_args(run) -> dict:
    """RunConfig's storage: a local folder (absolute: see main()); a URL as it is (Ray Train resolves its
    filesystem), or, with ``run.storage_options``, that fsspec filesystem handed to Ray Train as a pyarrow one
    (workers get it pickled, endpoint and credentials included, whatever their node's environment)."""
    path = run.storage_path
    if "://" not in path or not run.storage_options:
        return {"storage_path": path}
    import fsspec
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, root = fsspec.core.url_to_fs(path, **run.storage_options)
    return {"storage_path": root, "storage_filesystem": PyFileSystem(FSSpecHandler(fs))}


def absolute_paths(cfg) -> None:
    """Ray Train workers run in another folder: the storage path and the local data paths of ``data.source`` /
    ``data.sources`` made absolute (URLs stay as they are); a relative storage path in Ray's copy of a submitted
    working directory is refused (its checkpoints would be deleted with Ray's session cache)."""
    from mvboost.config import absolute_path

    cfg.run.storage_path = absolute_path(cfg.run.storage_path, "run.storage_path")
    cfg.data.source = absolute_path(cfg.data.source)
    cfg.data.sources = [absolute_path(s) if isinstance(s, str)
                        else {**s, "source": absolute_path(str(s.get("source", "")))}
                        if isinstance(s, dict) and s.get("source") else s for s in cfg.data.sources]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--data", help="shards: the generation job's output URL or a brace pattern")
    p.add_argument("--output", help="Ray Train storage path (RunConfig.storage_path)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    from mvboost.config import ConfigError, load_config
    from mvboost.train.config import TrainConfig, check_config
    from mvboost.train.context import load_step_hook
    from mvboost.train.inputs import list_sources

    overrides = list(a.overrides)
    if a.data:
        overrides.append(f"data.source={a.data}")
    if a.output:
        overrides.append(f"run.storage_path={a.output}")
    from mvboost.io.reader import ShardDataError

    try:
        cfg = load_config(TrainConfig, a.config, overrides)
        check_config(cfg)  # once, here, not on every worker
        absolute_paths(cfg)
        # data problems are deterministic: found here, once, before Ray starts (not retried by workers); the same
        # listing the loop makes
        listings = [ls for _, _, _, ls in list_sources(cfg.data)]
        load_step_hook(cfg.run.step_hook)  # a hook that cannot be imported fails here, not in every worker
    except (ConfigError, ShardDataError, FileNotFoundError, ValueError, ImportError, AttributeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for url, why in (s for listing in listings for s in listing.skipped):
        print(f"skipping shard {url}: {why}", file=sys.stderr)
    from ray_jobs.local_ray import connect

    try:
        local = connect()  # RAY_ADDRESS (ray job submit) or the embedded loopback-only Ray
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from mvboost.train.progress import ProgressBar

    try:
        with ProgressBar(run_folder(cfg.run), cfg.train.steps, cfg.run.storage_options, enabled=cfg.run.progress_bar):
            result = build_trainer(cfg, local).fit()
    except Exception as e:  # noqa: BLE001 - Ray Train raises TrainingFailedError after the retries
        print(f"error: training failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:500] if str(e) else ''}",
              file=sys.stderr)
        return 1
    if result.error:
        print(f"error: training failed: {str(result.error).strip().splitlines()[0][:500]}", file=sys.stderr)
        return 1
    where = result.checkpoint.path if result.checkpoint else None
    scheme = cfg.run.storage_path.partition("://")[0] if "://" in cfg.run.storage_path else ""
    if where and scheme and "://" not in where:  # a path inside the filesystem handed to Ray Train
        where = f"{scheme}://{where}"
    print(f"done: step {result.metrics.get('step')}, loss {result.metrics.get('loss', float('nan')):.4f}; "
          f"checkpoint {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
