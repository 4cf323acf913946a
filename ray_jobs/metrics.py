"""The job's live metrics on Ray's Prometheus endpoint (``ray_<name>``, ``_total`` for counters).

One table, :data:`METRICS`, defines them; ``cluster/grafana_mvboost.json`` plots them (a test checks
that every series it plots is defined here or exported by Ray Data). Every series the job can know
in advance (each stage, the totals) is registered at 0 when the job starts, so dashboards show 0
rather than "no data" until the first item finishes.

* driver (:class:`JobMetrics`): items accepted, rejected per stage, rejections per stage and reason
  class, shards committed, items pending, busy GPU-seconds per stage (stage seconds x the GPUs its
  worker holds), GPU-seconds *held* (sampled: the GPUs Ray has handed to workers, busy or idle) and
  their $ at ``job.gpu_hour_usd``;
* workers (:class:`StageMetrics`): per stage, items in and out as each batch enters and leaves the
  stage (in - out = items being processed now; ``rate(out)`` = items/s of the stage).

Queue depth per operator comes from Ray Data itself (``ray_data_operator_queued_blocks``, labelled
``operator="MapBatches(<stage>)_N"`` now that operators are named after their stages).
"""
from __future__ import annotations

import threading
import time

#: name -> (kind, description, tag keys)
METRICS = {
    "mvboost_items_accepted": ("counter", "items written as samples", ()),
    "mvboost_items_rejected": ("counter", "items rejected, by the stage that rejected them", ("stage",)),
    "mvboost_rejections": ("counter", "rejections by stage and reason class", ("stage", "reason")),
    "mvboost_shards_committed": ("counter", "shards committed (manifest written)", ()),
    "mvboost_items_pending": ("gauge", "items of this run not finished yet", ()),
    "mvboost_stage_items_in": ("counter", "items that entered a stage's worker", ("stage",)),
    "mvboost_stage_items_out": ("counter", "items that left a stage (processed or rejected there)", ("stage",)),
    "mvboost_stage_seconds": ("counter", "busy seconds per stage, summed over items", ("stage",)),
    "mvboost_gpu_seconds_busy": ("counter", "busy GPU-seconds: stage seconds x the GPUs its worker holds", ("stage",)),
    "mvboost_gpu_seconds_held": ("counter", "GPU-seconds held by the job's workers, busy or idle (sampled)", ()),
    "mvboost_usd": ("counter", "$ of the GPU-seconds held, at job.gpu_hour_usd", ()),
}

#: what Ray Data exports and the dashboard plots (checked against a live endpoint by the tests)
RAY_DATA_METRICS = ("ray_data_operator_queued_blocks", "ray_data_num_tasks_running")


def prometheus_names() -> set[str]:
    return {f"ray_{n}_total" if kind == "counter" else f"ray_{n}" for n, (kind, _, _) in METRICS.items()}


def _make(name: str):
    from ray.util.metrics import Counter, Gauge

    kind, desc, tags = METRICS[name]
    return (Counter if kind == "counter" else Gauge)(name, description=desc, tag_keys=tags)


def _register(metric, tags: dict | None = None) -> None:
    """A series at 0 (Counter.inc refuses 0; the recorder takes it)."""
    try:
        metric._record(0.0, tags=tags or None)  # noqa: SLF001 - the public API has no "declare at 0"
    except Exception:  # noqa: BLE001 - a missing series is cosmetic
        pass


def reason_label(reason: str) -> str:
    """The ``reason`` label of the rejection counter: the reason's group, bounded in length."""
    from mvboost.pipeline.summary import reason_group

    return reason_group(reason or "")[:60] or "unknown"


class JobMetrics:
    """Driver-side metrics; all series of the known stages registered at start."""

    def __init__(self, stages: list[str], gpu_share: dict[str, float], gpu_hour_usd: float = 0.0):
        self.share = gpu_share
        self.price = gpu_hour_usd
        self.m = {name: _make(name) for name in METRICS if name not in ("mvboost_stage_items_in",
                                                                        "mvboost_stage_items_out")}
        for name in ("mvboost_items_accepted", "mvboost_shards_committed", "mvboost_gpu_seconds_held", "mvboost_usd"):
            _register(self.m[name])
        for s in stages:
            for name in ("mvboost_items_rejected", "mvboost_stage_seconds", "mvboost_gpu_seconds_busy"):
                _register(self.m[name], {"stage": s})
        self.m["mvboost_items_pending"].set(0)

    def pending(self, n: int) -> None:
        self.m["mvboost_items_pending"].set(n)

    def item(self, row: dict) -> None:
        if row.get("status") == "ok":
            self.m["mvboost_items_accepted"].inc()
        else:
            stage = row.get("reject_stage") or "unknown"
            self.m["mvboost_items_rejected"].inc(tags={"stage": stage})
            self.m["mvboost_rejections"].inc(tags={"stage": stage, "reason": reason_label(row.get("reject_reason"))})
        for k, v in row.items():
            if k.startswith("t_") and v:
                stage = k[2:]
                self.m["mvboost_stage_seconds"].inc(float(v), tags={"stage": stage})
                if self.share.get(stage):
                    self.m["mvboost_gpu_seconds_busy"].inc(float(v) * self.share[stage], tags={"stage": stage})

    def shard(self) -> None:
        self.m["mvboost_shards_committed"].inc()

    def held(self, gpu_seconds: float) -> None:
        if gpu_seconds > 0:
            self.m["mvboost_gpu_seconds_held"].inc(gpu_seconds)
            if self.price:
                self.m["mvboost_usd"].inc(gpu_seconds * self.price / 3600)


class StageMetrics:
    """Worker-side: items in and out of each stage (one instance per worker process)."""

    _instance = None

    def __init__(self):
        self.items_in = _make("mvboost_stage_items_in")
        self.items_out = _make("mvboost_stage_items_out")

    @classmethod
    def get(cls) -> StageMetrics | None:
        if cls._instance is None:
            try:
                cls._instance = cls()
            except Exception:  # noqa: BLE001 - metrics are optional (no Ray: in tests of the adapters)
                return None
        return cls._instance

    def register(self, stages) -> None:
        for s in stages:
            _register(self.items_in, {"stage": s})
            _register(self.items_out, {"stage": s})

    def entered(self, stage: str, n: int) -> None:
        if n:
            self.items_in.inc(n, tags={"stage": stage})

    def left(self, stage: str, n: int) -> None:
        if n:
            self.items_out.inc(n, tags={"stage": stage})


class GpuHeldSampler:
    """Samples the GPUs Ray has handed out (cluster GPUs - available GPUs) every ``interval`` seconds and
    integrates them into GPU-seconds held: what the job pays for, busy or idle."""

    def __init__(self, on_sample=None, interval: float = 2.0):
        import ray

        self.ray, self.on_sample, self.interval = ray, on_sample, interval
        self.total = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-held-sampler", daemon=True)

    def held_now(self) -> float:
        total = float(self.ray.cluster_resources().get("GPU", 0.0))
        return max(0.0, total - float(self.ray.available_resources().get("GPU", 0.0)))

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            try:
                gs = self.held_now() * (now - last)
            except Exception:  # noqa: BLE001 - a failed sample is skipped
                gs = 0.0
            last = now
            self.total += gs
            if self.on_sample is not None:
                self.on_sample(gs)

    def start(self) -> GpuHeldSampler:
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.total
