"""The generation job without Ray: config, item plan, shard tracking, and the in-process runner.

The Ray job (``ray_jobs/generate.py``) uses the same config, plan, stage list and tracker; only the
execution of the stage list differs.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

from ..config import ConfigError
from ..io.shards import OutputStore, jsonl_bytes, shard_name
from .stage import OK, STATUS, FusedStage, Stage, to_python

log = logging.getLogger(__name__)

#: the columns that come back from the workers to the driver (everything heavy stays at the output)
RESULT_COLUMNS = ("item_id", "shard", STATUS, "reject_stage", "reject_reason", "staged_bytes")


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
    gpu_hour_usd: float = 0.0  # price of one GPU-hour, for the $ per accepted sample (0: not reported)


@dataclass
class PromptsSection:
    source: str = "offline"  # "offline" (taxonomy composer) or "file" (a JSONL prompt bank)
    bank: str | None = None  # fsspec URL of a JSONL bank with prompt_id + prompt (for source: file)
    seed: int = 0


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


def _stage_registry() -> dict[str, type[Stage]]:
    from ..stages import STAGES

    return STAGES


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
    return cfg


def stage_units(cfg) -> list[tuple[str, ...]]:
    """``job.stages`` as operators: each a tuple of stage names (one name, or a fused group)."""
    units = []
    for i, entry in enumerate(cfg.job.stages):
        if isinstance(entry, str):
            units.append((entry,))
        elif isinstance(entry, (list, tuple)) and entry and all(isinstance(x, str) for x in entry):
            units.append(tuple(entry))
        else:
            raise ConfigError(f"job.stages[{i}]: expected a stage name or a non-empty list of stage names "
                              f"(a fused group), got {entry!r}")
    return units


def flat_stages(cfg) -> list[str]:
    return [name for unit in stage_units(cfg) for name in unit]


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
        if res.min_actors < 1 or res.max_actors < 0 or (res.max_actors and res.max_actors < res.min_actors):
            raise ConfigError(f"{unit[0]}.resources: need 1 <= min_actors <= max_actors (max_actors 0 = no bound), "
                              f"got {res.min_actors} and {res.max_actors}")
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


def item_seed(job_seed: int, prompt_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{job_seed}:{prompt_id}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def load_prompts(cfg) -> list[dict]:
    if cfg.prompts.source == "offline":
        from ..prompts.offline import offline_prompts

        return offline_prompts(cfg.job.n, cfg.prompts.seed)
    import fsspec

    with fsspec.open(cfg.prompts.bank, "rt") as f:
        bank = [json.loads(line) for line in f if line.strip()]
    if len(bank) < cfg.job.n:
        raise ConfigError(f"prompt bank {cfg.prompts.bank} has {len(bank)} prompts, job.n is {cfg.job.n}")
    return bank[: cfg.job.n]


def plan_items(cfg) -> list[dict]:
    """The deterministic item plan: item i -> key (from the prompt id), shard i // shard_size, seed."""
    prompts = load_prompts(cfg)
    items, seen = [], set()
    for i, p in enumerate(prompts):
        key = "p" + str(p["prompt_id"]).replace(".", "_")
        if key in seen:
            raise ConfigError(f"prompt bank has a duplicate prompt id {p['prompt_id']!r}")
        seen.add(key)
        items.append({"item_id": key, "prompt_id": p["prompt_id"], "index": i, "shard": i // cfg.job.shard_size,
                      "prompt": p["prompt"], "category": p.get("category", ""),
                      "prompt_source": p.get("source", cfg.prompts.source),
                      "seed": item_seed(cfg.job.seed, p["prompt_id"]), STATUS: OK, "reject_stage": "",
                      "reject_reason": ""})
    return items


class ShardTracker:
    """Counts finished items per shard and says when a shard can be committed."""

    def __init__(self, items: list[dict], done_keys: set[str], committed: set[int]):
        self.keys: dict[int, list[str]] = collections.defaultdict(list)
        for it in items:
            self.keys[it["shard"]].append(it["item_id"])
        self.committed = set(committed)
        self.outstanding = {s: {k for k in ks if k not in done_keys} for s, ks in self.keys.items()
                            if s not in committed}
        self.seconds: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)

    def ready(self) -> list[int]:
        return sorted(s for s, left in self.outstanding.items() if not left and s not in self.committed)

    def mark(self, row: dict) -> int | None:
        s = int(row["shard"])
        for k, v in row.items():
            if k.startswith("t_") and v:
                self.seconds[s][k[2:]] += float(v)
        left = self.outstanding.get(s)
        if left is None:
            return None
        left.discard(row["item_id"])
        return s if not left else None


@dataclass
class RunSummary:
    output: str
    requested: int
    accepted: int
    rejected: int
    skipped_already_done: int
    rejected_by_reason: dict
    stage_seconds: dict
    shards: list
    wall_seconds: float
    steady_items_per_s: float = 0.0  # between the first and the last finished item (excludes start-up)
    gpu_seconds: float = 0.0  # busy GPU-seconds this run: stage seconds x the stage's num_gpus
    gpu_seconds_per_accepted: float = 0.0
    usd_per_accepted: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def format(self) -> str:
        lines = [f"shards at {self.output} ({len(self.shards)} committed: "
                 f"{shard_name(self.shards[0]) if self.shards else '-'} … "
                 f"{shard_name(self.shards[-1]) if self.shards else '-'})",
                 f"requested {self.requested}: accepted {self.accepted}, rejected {self.rejected}"
                 f" ({self.skipped_already_done} were already finished before this run)"]
        for reason, n in sorted(self.rejected_by_reason.items(), key=lambda x: -x[1]):
            lines.append(f"  rejected {n:>5}  {reason}")
        if self.stage_seconds:
            lines.append("seconds per stage (this run, summed over items): " + ", ".join(
                f"{k} {v:.2f}" for k, v in self.stage_seconds.items()))
        if self.gpu_seconds:
            cost = f", ${self.usd_per_accepted:.5f} per accepted sample" if self.usd_per_accepted is not None else ""
            lines.append(f"busy GPU-seconds {self.gpu_seconds:.1f} ({self.gpu_seconds_per_accepted:.2f} per accepted "
                         f"sample{cost})")
        lines.append(f"wall time {self.wall_seconds:.1f} s; steady throughput {self.steady_items_per_s:.3f} items/s")
        return "\n".join(lines)


class JobState:
    """Everything the driver needs: output store, plan, what is already done, and the tracker."""

    def __init__(self, cfg):
        validate(cfg)
        self.cfg = cfg
        self.store = OutputStore(cfg.job.output, cfg.job.storage_options)
        self.store.check_writable()
        self.items = plan_items(cfg)
        self.store.claim_job({"n": cfg.job.n, "shard_size": cfg.job.shard_size, "seed": cfg.job.seed,
                              "prompts_source": cfg.prompts.source, "prompts_seed": cfg.prompts.seed,
                              "first_key": self.items[0]["item_id"], "last_key": self.items[-1]["item_id"]})
        self.shards = sorted({it["shard"] for it in self.items})
        committed, staged = self.store.finished(self.shards)
        self.tracker = ShardTracker(self.items, staged, committed)
        done = staged | {it["item_id"] for it in self.items if it["shard"] in committed}
        self.pending = [it for it in self.items if it["item_id"] not in done]
        self.skipped = len(self.items) - len(self.pending)
        self.info = JobInfo(cfg.job.output, dict(cfg.job.storage_options), job_meta(cfg))
        self.t0 = time.time()
        self.arrivals: list[tuple[float, int]] = []  # (time, items) per batch of results
        self.run_rejected = 0

    def commit(self, shard: int) -> None:
        self.store.commit_shard(shard, self.tracker.keys[shard], dict(self.tracker.seconds.get(shard, {})))
        self.tracker.committed.add(shard)

    def commit_ready(self) -> None:
        for s in self.tracker.ready():
            self.commit(s)

    def on_result(self, row: dict) -> int | None:
        if row.get(STATUS) != OK:
            self.run_rejected += 1
        return self.tracker.mark(row)

    @property
    def run_seconds(self) -> collections.Counter:
        """Seconds per stage in this run: the sum of the per-shard timings the tracker collects."""
        return sum(self.tracker.seconds.values(), collections.Counter())

    def batch_done(self, n: int) -> None:
        self.arrivals.append((time.time(), n))

    def consume(self, batch: dict, on_row=None, on_commit=None) -> int:
        """Take one batch of results (columns -> sequences) from either executor: keep only the status
        columns, count them, commit every shard they complete. Returns the number of rows."""
        cols = [c for c in batch if c in RESULT_COLUMNS or c.startswith("t_")]
        n = len(batch["item_id"])
        for i in range(n):
            row = {c: to_python(batch[c][i]) for c in cols}
            if on_row is not None:
                on_row(row)
            shard = self.on_result(row)
            if shard is not None:
                self.commit(shard)
                if on_commit is not None:
                    on_commit()
        self.batch_done(n)
        return n

    def _steady(self) -> float:
        """Items/s after the first batch of results (which pays model loading and actor start-up)."""
        if len(self.arrivals) < 2 or self.arrivals[-1][0] <= self.arrivals[0][0]:
            return 0.0
        return sum(n for _, n in self.arrivals[1:]) / (self.arrivals[-1][0] - self.arrivals[0][0])

    def finish(self) -> RunSummary:
        self.commit_ready()
        not_done = {s: sorted(left) for s, left in self.tracker.outstanding.items()
                    if left and s not in self.tracker.committed}
        if not_done:
            s, keys = next(iter(not_done.items()))
            raise RuntimeError(f"{len(not_done)} shard(s) still have unfinished items (e.g. {shard_name(s)}: "
                               f"{keys[:3]}); rerun the job to finish them")
        rejects = self.store.all_rejects(self.shards)
        run_seconds = self.run_seconds
        share = gpu_share(self.cfg)
        gpu_s = sum(v * share.get(k, 0.0) for k, v in run_seconds.items())
        new_accepted = max(0, sum(n for _, n in self.arrivals) - self.run_rejected)
        by_reason = collections.Counter(f"{r['stage']}: {_reason_class(r['reason'])}" for r in rejects)
        summary = RunSummary(output=self.cfg.job.output, requested=len(self.items),
                             accepted=len(self.items) - len(rejects), rejected=len(rejects),
                             skipped_already_done=self.skipped, rejected_by_reason=dict(by_reason),
                             stage_seconds={k: round(v, 3) for k, v in run_seconds.items()},
                             shards=self.shards, wall_seconds=round(time.time() - self.t0, 2),
                             steady_items_per_s=round(self._steady(), 4), gpu_seconds=round(gpu_s, 3))
        if new_accepted and gpu_s:
            summary.gpu_seconds_per_accepted = round(gpu_s / new_accepted, 4)
            if self.cfg.job.gpu_hour_usd:
                summary.usd_per_accepted = round(summary.gpu_seconds_per_accepted * self.cfg.job.gpu_hour_usd / 3600, 6)
        self.store.write_atomic(self.store.path("rejects.jsonl"),
                                jsonl_bytes(rejects))
        self.store.write_atomic(self.store.path("summary.json"), json.dumps(summary.to_dict(), indent=1).encode())
        return summary


def _reason_class(reason: str) -> str:
    """Group reasons for the summary: drop numbers after a colon ("object too small: 0.3% …")."""
    return reason.split(":")[0].split("(")[0].strip()


def gpu_share(cfg) -> dict[str, float]:
    """Stage name -> the GPUs its worker holds (a fused group's members share their group's)."""
    return {name: float(getattr(cfg, unit[0]).resources.num_gpus) for unit in stage_units(cfg) for name in unit}


def build_unit(unit: tuple[str, ...], cfg, info: JobInfo) -> Stage | FusedStage:
    stages = _stage_registry()
    built = [stages[name](getattr(cfg, name), info) for name in unit]
    return built[0] if len(built) == 1 else FusedStage(built)


def build_units(cfg, info: JobInfo) -> list[Stage | FusedStage]:
    return [build_unit(u, cfg, info) for u in stage_units(cfg)]


def layout_units(cfg) -> list:
    """The job's operators with their resources, for :func:`mvboost.pipeline.layout.check_layout`."""
    from .layout import Unit

    stages = _stage_registry()
    out = []
    for unit in stage_units(cfg):
        res = getattr(cfg, unit[0]).resources
        out.append(Unit("+".join(unit), res.num_gpus, res.num_cpus, res.min_actors,
                        any(stages[n].uses_actor for n in unit)))
    return out


def iter_batches(rows: list[dict], size: int):
    for i in range(0, len(rows), size):
        chunk = rows[i:i + size]
        yield {c: [r[c] for r in chunk] for c in chunk[0]}


def run_in_process(cfg, progress: bool | None = None) -> RunSummary:
    """Run the stage list in this process, batch by batch (debugging, tests, the bench baseline)."""
    from tqdm.auto import tqdm

    state = JobState(cfg)
    state.commit_ready()  # shards finished by an earlier run but not committed
    units = build_units(cfg, state.info)
    for u in units:
        u.preflight()
    size = max(1, min(u.resources.batch_size for u in units))
    show = cfg.job.progress if progress is None else progress
    with tqdm(total=len(state.items), initial=state.skipped, desc="items", disable=not show) as bar:
        for batch in iter_batches(state.pending, size):
            for u in units:
                batch = u(batch)
            bar.update(state.consume(batch))
    return state.finish()
