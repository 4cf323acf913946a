"""The generation job's configuration: sections, the generated JobConfig (one section per stage),
loading with ``--set`` overrides, validation, and the model ids/revisions recorded in samples."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..config import ConfigError, RaySection, absolute_path
from ..prompts.dedupe import DEFAULT_THRESHOLD
from ..stages import STAGES
from .units import Unit, build_units, model_refs, stage_names


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
    # rounds in which items that failed for infrastructure reasons (CUDA error, OOM, timeout) go through again
    # in the same run; items still failing after them are left unfinished for the next run, never rejected
    infra_retries: int = 2
    # re-run recorded rejects on this output ("all", a stage, a reason group or "<stage>: <reason group>"), into
    # shards of their own (see mvboost.pipeline.retry); "": a normal run
    retry_rejected: str = ""


@dataclass
class PromptsSection:
    # "offline" (taxonomy composer), "file" (a JSONL prompt bank) or "assets" (3D assets, no prompts: every
    # asset found under prompts.assets is one item, job.n does not apply; stages [asset_render, write])
    source: str = "offline"
    bank: str | None = None  # fsspec URL of a JSONL bank with prompt_id + prompt (for source: file)
    assets: str | None = None  # fsspec URL of a folder of GSO-layout objects and/or OBJ/GLB files (source: assets)
    asset_list: str | None = None  # optional: a text file naming the assets to use, one per line (source: assets)
    # a single-view image dataset (source: images): a folder or fsspec URL of .png/.jpg/.webp images and/or
    # img2dataset-style .tar shards; every image is one item, job.n does not apply; stages [image_read, matting, …]
    images: str | None = None
    storage_options: dict = field(default_factory=dict)  # fsspec options for prompts.images (e.g. an endpoint)
    seed: int = 0
    # file banks: also reject near-duplicates (MiniLM cosine >= threshold, as LLM banks do); the verdicts
    # are cached by bank content under $MVBOOST_CACHE/prompt-banks, so only the first run embeds
    near_duplicates: bool = True
    near_duplicate_threshold: float = DEFAULT_THRESHOLD


def _make_job_config_class():
    fields_ = [("job", JobSection, field(default_factory=JobSection)),
               ("prompts", PromptsSection, field(default_factory=PromptsSection))]
    for name, cls in STAGES.items():
        fields_.append((name, cls.Config, field(default_factory=cls.Config)))
    fields_.append(("ray", RaySection, field(default_factory=RaySection)))
    cls = dataclasses.make_dataclass("JobConfig", fields_)
    cls.__module__ = __name__  # picklable as mvboost.pipeline.config.JobConfig
    return cls


JobConfig = _make_job_config_class()


def load_job_config(path=None, overrides=None):
    from ..config import load_config

    cfg = load_config(JobConfig, path, overrides)
    validate(cfg)
    cfg.job.output = absolute_path(cfg.job.output, "job.output")
    return cfg


def validate(cfg) -> list[Unit]:
    """Check the config; returns the job's built units (without a JobInfo yet: see ``Stage.bind``)."""
    units = build_units(cfg)
    if not units or units[-1].names != ("write",):
        raise ConfigError("job.stages must end with 'write', on its own (it stages each finished item at the output)")
    if cfg.job.n <= 0 or cfg.job.shard_size <= 0:
        raise ConfigError("job.n and job.shard_size must be positive")
    for unit in units:
        res, first = unit.resources, unit.names[0]
        if res.batch_size <= 0:
            raise ConfigError(f"{first}.resources.batch_size must be positive, got {res.batch_size}")
        if res.memory < 0 or any(not isinstance(v, (int, float)) or v <= 0 for v in (res.custom or {}).values()):
            raise ConfigError(f"{first}.resources: memory must be >= 0 and custom resources positive numbers, "
                              f"got memory {res.memory!r}, custom {res.custom!r}")
        if res.min_actors < 1 or res.max_actors < 0 or (res.max_actors and res.max_actors < res.min_actors):
            raise ConfigError(f"{first}.resources: need 1 <= min_actors <= max_actors (max_actors 0 = no bound), "
                              f"got {res.min_actors} and {res.max_actors}")
    for key in ("num_cpus", "num_gpus"):
        value = getattr(cfg.ray, key)
        if value is not None and value < 0:
            raise ConfigError(f"ray.{key} must be >= 0 (or unset: what the machine has), got {value}")
    if cfg.ray.check_layout not in ("auto", "strict", "warn", "off"):
        raise ConfigError(f"ray.check_layout must be auto, strict, warn or off, got {cfg.ray.check_layout!r}")
    have = {"item_id", "prompt", "seed", "shard", "index"}
    if cfg.prompts.source == "assets":
        have |= {"asset_root", "asset", "asset_kind"}
    if cfg.prompts.source == "images":
        have |= {"image_url", "image_member", "image_name"}
    for stage in (s for u in units for s in u.members):  # every input must be produced upstream
        missing = [c for c in stage.inputs if c not in have]
        if missing:
            raise ConfigError(f"job.stages: stage {stage.name!r} needs {missing}, produced by no earlier stage")
        have |= set(stage.outputs)
    if cfg.prompts.source not in ("offline", "file", "assets", "images"):
        raise ConfigError(f"prompts.source must be 'offline', 'file', 'assets' or 'images', "
                          f"got {cfg.prompts.source!r}")
    if cfg.prompts.source == "images" and not cfg.prompts.images:
        raise ConfigError("prompts.source is 'images' but prompts.images (or --images) is not set")
    if not cfg.image_read.storage_options:  # the workers read the images with the options the plan listed them with
        cfg.image_read.storage_options = dict(cfg.prompts.storage_options)
    if cfg.prompts.source == "file" and not cfg.prompts.bank:
        raise ConfigError("prompts.source is 'file' but prompts.bank is not set")
    if cfg.prompts.source == "assets" and not cfg.prompts.assets:
        raise ConfigError("prompts.source is 'assets' but prompts.assets (or --assets) is not set")
    if not 0.0 < cfg.prompts.near_duplicate_threshold <= 1.0:
        raise ConfigError(f"prompts.near_duplicate_threshold must be in (0, 1] (a cosine similarity), "
                          f"got {cfg.prompts.near_duplicate_threshold}")
    return units


def job_meta(cfg, units: list[Unit]) -> dict:
    """Model ids, revisions and settings recorded in every sample's meta.json."""
    from ..models.hub import model_record

    meta: dict = {"job": cfg.job.name, "job_seed": cfg.job.seed, "mvboost_version": _version()}
    meta["models"] = {ref.stage: model_record(ref.id, ref.revision, what=ref.stage) for ref in model_refs(units)}
    if "refine" in stage_names(units):
        meta["strength"] = cfg.refine.strength
    return meta


def _version() -> str:
    from .. import __version__

    return __version__
