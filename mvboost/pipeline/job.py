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
from .stage import OK, STATUS, Stage

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
    stages: list[str] = field(default_factory=lambda: ["text_to_image", "matting", "write"])
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


def validate(cfg) -> None:
    stages = _stage_registry()
    unknown = [s for s in cfg.job.stages if s not in stages]
    if unknown:
        raise ConfigError(f"job.stages: unknown stage(s) {unknown}; available: {sorted(stages)}")
    if not cfg.job.stages or cfg.job.stages[-1] != "write":
        raise ConfigError("job.stages must end with 'write' (it stages each finished item at the output)")
    if cfg.job.n <= 0 or cfg.job.shard_size <= 0:
        raise ConfigError("job.n and job.shard_size must be positive")
    for i, name in enumerate(cfg.job.stages):  # every input must be produced upstream
        have = {"item_id", "prompt", "seed", "shard", "index"} | {
            c for s in cfg.job.stages[:i] for c in stages[s].outputs}
        missing = [c for c in stages[name].inputs if c not in have]
        if missing:
            raise ConfigError(f"job.stages: stage {name!r} needs {missing}, produced by no earlier stage")
    if cfg.prompts.source not in ("offline", "file"):
        raise ConfigError(f"prompts.source must be 'offline' or 'file', got {cfg.prompts.source!r}")
    if cfg.prompts.source == "file" and not cfg.prompts.bank:
        raise ConfigError("prompts.source is 'file' but prompts.bank is not set")


def job_meta(cfg) -> dict:
    """Model ids, revisions and settings recorded in every sample's meta.json."""
    meta: dict = {"job": cfg.job.name, "job_seed": cfg.job.seed, "mvboost_version": _version()}
    models = {}
    for name in cfg.job.stages:
        sc = getattr(cfg, name)
        if hasattr(sc, "model"):
            models[name] = {"id": sc.model, "revision": getattr(sc, "revision", None)}
    meta["models"] = models
    if "refine" in cfg.job.stages:
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
        gpu_s = sum(v * getattr(self.cfg, k).resources.num_gpus for k, v in run_seconds.items()
                    if hasattr(self.cfg, k))
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


def build_stages(cfg, info: JobInfo) -> list[Stage]:
    stages = _stage_registry()
    return [stages[name](getattr(cfg, name), info) for name in cfg.job.stages]


def iter_batches(rows: list[dict], size: int):
    for i in range(0, len(rows), size):
        chunk = rows[i:i + size]
        yield {c: [r[c] for r in chunk] for c in chunk[0]}


def run_in_process(cfg, progress: bool | None = None) -> RunSummary:
    """Run the stage list in this process, batch by batch (debugging, tests, the bench baseline)."""
    from tqdm.auto import tqdm

    state = JobState(cfg)
    state.commit_ready()  # shards finished by an earlier run but not committed
    stages = build_stages(cfg, state.info)
    size = max(1, min(s.resources.batch_size for s in stages))
    show = cfg.job.progress if progress is None else progress
    with tqdm(total=len(state.items), initial=state.skipped, desc="items", disable=not show) as bar:
        for batch in iter_batches(state.pending, size):
            for st in stages:
                batch = st(batch)
            for i in range(len(batch["item_id"])):
                row = {k: v[i] for k, v in batch.items() if k in RESULT_COLUMNS or k.startswith("t_")}
                done_shard = state.on_result(row)
                if done_shard is not None:
                    state.commit(done_shard)
            state.batch_done(len(batch["item_id"]))
            bar.update(len(batch["item_id"]))
    return state.finish()
