"""The generation job's configuration: sections, the generated JobConfig (one section per stage),
loading with ``--set`` overrides, validation, and the model ids/revisions recorded in samples."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..config import ConfigError
from ..prompts.dedupe import DEFAULT_THRESHOLD
from .units import _stage_registry, flat_stages, stage_units


@dataclass
class JobSection:
    name: str = "mvboost"
    n: int = 100
    shard_size: int = 100
    seed: int = 0
    output: str = "outputs/mvboost"
    storage_options: dict = field(default_factory=dict)
    # the stage list; an entry that is itself a list runs those stages in one worker (a fused group,
    # e.g. [era3d, lgm, render, refine]: one actor per GPU holds every model of the group once)
    stages: list = field(default_factory=lambda: ["text_to_image", "matting", "write"])
    progress: bool = True
    commit_cpus: float = 0.25  # CPUs of the Ray task that commits each finished shard (I/O bound)
    gpu_hour_usd: float = 0.0  # price of one GPU-hour, for the $ per accepted sample (0: not reported)


@dataclass
class PromptsSection:
    source: str = "offline"  # "offline" (taxonomy composer) or "file" (a JSONL prompt bank)
    bank: str | None = None  # fsspec URL of a JSONL bank with prompt_id + prompt (for source: file)
    seed: int = 0
    # file banks: also reject near-duplicates (MiniLM cosine >= threshold, as LLM banks do); the verdicts
    # are cached by bank content under $MVBOOST_CACHE/prompt-banks, so only the first run embeds
    near_duplicates: bool = True
    near_duplicate_threshold: float = DEFAULT_THRESHOLD


@dataclass
class RaySection:
    address: str | None = None  # None: start a local Ray on 127.0.0.1; "auto" or ray://…: connect
    num_cpus: int | None = None  # for the local Ray only
    num_gpus: float | None = None  # for the local Ray only (fake GPUs schedule, torch still uses the CPU)
    max_tasks_in_flight_per_actor: int = 2
    no_progress_timeout_s: float = 0.0  # 0: off; else fail a stalled run (Ray Data's execution timeout)
    # refuse at start a layout whose actor pools cannot all start on the cluster's nodes:
    # auto = on for the embedded local Ray (fixed size), a warning on a cluster (an autoscaler may add nodes)
    check_layout: str = "auto"  # auto | strict | warn | off


@dataclass
class JobInfo:
    """What stages may read about the job (plain data, picklable)."""

    output: str
    storage_options: dict
    meta: dict


def _make_job_config_class():
    stages = _stage_registry()
    fields_ = [("job", JobSection, field(default_factory=JobSection)),
               ("prompts", PromptsSection, field(default_factory=PromptsSection))]
    for name, cls in stages.items():
        fields_.append((name, cls.Config, field(default_factory=cls.Config)))
    fields_.append(("ray", RaySection, field(default_factory=RaySection)))
    cls = dataclasses.make_dataclass("JobConfig", fields_)
    cls.__module__ = __name__  # picklable as mvboost.pipeline.job.JobConfig
    return cls


JobConfig = _make_job_config_class()


def load_job_config(path=None, overrides=None):
    from ..config import load_config

    cfg = load_config(JobConfig, path, overrides)
    validate(cfg)
    cfg.job.output = absolute_output(cfg.job.output)
    return cfg


def absolute_output(url: str, cwd: str | None = None) -> str:
    """A local output path made absolute (URLs unchanged). A relative path inside Ray's copy of a
    submitted working directory would land in Ray's session cache, which Ray deletes: refused."""
    import os

    if "://" in str(url):
        return str(url)
    cwd = cwd or os.getcwd()
    path = os.path.abspath(os.path.join(cwd, os.path.expanduser(str(url))))
    if not os.path.isabs(os.path.expanduser(str(url))) and "/runtime_resources/working_dir_files/" in cwd:
        raise ConfigError(f"job.output {url!r} is relative and this job runs in Ray's copy of the working directory "
                          f"({cwd}): the shards would land in Ray's session cache and be deleted with it. Pass "
                          "--output with an absolute path on shared storage or a URL (s3://…, gs://…)")
    return path


def validate(cfg) -> None:
    stages = _stage_registry()
    units = stage_units(cfg)
    flat = [n for u in units for n in u]
    unknown = [s for s in flat if s not in stages]
    if unknown:
        raise ConfigError(f"job.stages: unknown stage(s) {unknown}; available: {sorted(stages)}")
    dup = sorted({s for s in flat if flat.count(s) > 1})
    if dup:
        raise ConfigError(f"job.stages: stage(s) {dup} listed more than once")
    if not units or units[-1] != ("write",):
        raise ConfigError("job.stages must end with 'write', on its own (it stages each finished item at the output)")
    if cfg.job.n <= 0 or cfg.job.shard_size <= 0:
        raise ConfigError("job.n and job.shard_size must be positive")
    for unit in units:
        res = getattr(cfg, unit[0]).resources
        if res.batch_size <= 0:
            raise ConfigError(f"{unit[0]}.resources.batch_size must be positive, got {res.batch_size}")
        if res.memory < 0 or any(not isinstance(v, (int, float)) or v <= 0 for v in (res.custom or {}).values()):
            raise ConfigError(f"{unit[0]}.resources: memory must be >= 0 and custom resources positive numbers, "
                              f"got memory {res.memory!r}, custom {res.custom!r}")
        if res.min_actors < 1 or res.max_actors < 0 or (res.max_actors and res.max_actors < res.min_actors):
            raise ConfigError(f"{unit[0]}.resources: need 1 <= min_actors <= max_actors (max_actors 0 = no bound), "
                              f"got {res.min_actors} and {res.max_actors}")
    for key in ("num_cpus", "num_gpus"):
        value = getattr(cfg.ray, key)
        if value is not None and value < 0:
            raise ConfigError(f"ray.{key} must be >= 0 (or unset: what the machine has), got {value}")
    if cfg.ray.check_layout not in ("auto", "strict", "warn", "off"):
        raise ConfigError(f"ray.check_layout must be auto, strict, warn or off, got {cfg.ray.check_layout!r}")
    for i, name in enumerate(flat):  # every input must be produced upstream
        have = {"item_id", "prompt", "seed", "shard", "index"} | {
            c for s in flat[:i] for c in stages[s].outputs}
        missing = [c for c in stages[name].inputs if c not in have]
        if missing:
            raise ConfigError(f"job.stages: stage {name!r} needs {missing}, produced by no earlier stage")
    if cfg.prompts.source not in ("offline", "file"):
        raise ConfigError(f"prompts.source must be 'offline' or 'file', got {cfg.prompts.source!r}")
    if cfg.prompts.source == "file" and not cfg.prompts.bank:
        raise ConfigError("prompts.source is 'file' but prompts.bank is not set")
    if not 0.0 < cfg.prompts.near_duplicate_threshold <= 1.0:
        raise ConfigError(f"prompts.near_duplicate_threshold must be in (0, 1] (a cosine similarity), "
                          f"got {cfg.prompts.near_duplicate_threshold}")


def job_meta(cfg) -> dict:
    """Model ids, revisions and settings recorded in every sample's meta.json."""
    from ..models.hub import ModelNotFound, is_built, looks_like_hub_id, resolve, resolved_commit

    meta: dict = {"job": cfg.job.name, "job_seed": cfg.job.seed, "mvboost_version": _version()}
    models = {}
    for name in flat_stages(cfg):
        sc = getattr(cfg, name)
        if hasattr(sc, "model"):
            rec = {"id": sc.model, "revision": None if is_built(sc.model) else getattr(sc, "revision", None)}
            if looks_like_hub_id(sc.model):
                try:  # the commit the revision points at in the local cache (what the workers load)
                    rec["commit"] = resolved_commit(resolve(sc.model, sc.revision, what=name))
                except ModelNotFound:
                    rec["commit"] = None  # preflight reports it
            models[name] = rec
    meta["models"] = models
    if "refine" in flat_stages(cfg):
        meta["strength"] = cfg.refine.strength
    return meta


def _version() -> str:
    from .. import __version__

    return __version__


