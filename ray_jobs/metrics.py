"""The job's live metrics on Ray's Prometheus endpoint (``ray_<name>``, ``_total`` for counters).

One table, :data:`METRICS`, defines them; ``cluster/grafana_mvboost.json`` plots them (a test checks
every expression of the dashboard against this table and the labels it declares). Every series the
job can know in advance (each stage, the totals) is registered at 0 when the job starts, so dashboards
show 0 rather than "no data" until the first item finishes. Every series carries ``JobId`` (Ray's job
id), so one dashboard filters one job on a shared cluster.

* driver (:class:`JobMetrics`): items accepted, items rejected by stage and reason group, item attempts
  retried after an infrastructure failure by stage, shards
  committed (counted when the commit has finished), items pending, busy GPU-seconds per stage (stage
  seconds x the GPUs its worker holds), GPU-seconds *held* (sampled: the GPUs of this job's live actors,
  busy or idle) and their $ at ``job.gpu_hour_usd``. These are exact: the driver counts the status rows
  it already receives, and before it exits :meth:`JobMetrics.final_export` waits until its node's
  metrics endpoint shows the final values (Ray exports a process's metrics every
  ``metrics_report_interval_ms``; what the driver counted in its last interval would otherwise be lost
  with it). On a cluster the node keeps a finished driver's series for Prometheus; the embedded local
  Ray ends with the driver, so a local run with a metrics port (:class:`MetricsEndpoint`) also waits
  until a scrape has seen the final values.
* workers (:class:`StageMetrics`): per stage, items in and out as each batch enters and leaves the
  stage (in - out = items being processed now; ``rate(out)`` = items/s of the stage).

Queue depth per operator comes from Ray Data itself (``ray_data_operator_queued_blocks``, labelled
``operator="MapBatches(<stage>)_N"`` now that operators are named after their stages).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.request

log = logging.getLogger(__name__)

#: name -> (kind, description, tag keys besides JobId)
METRICS = {
    "mvboost_items_accepted": ("counter", "items written as samples", ()),
    "mvboost_items_rejected": ("counter", "items rejected, by the stage that rejected them and the reason group",
                               ("stage", "reason")),
    "mvboost_items_retried": ("counter", "item attempts that failed for infrastructure reasons (CUDA error, OOM, "
                              "timeout) and go through again, by stage", ("stage",)),
    "mvboost_shards_committed": ("counter", "shards committed (manifest written)", ()),
    "mvboost_items_pending": ("gauge", "items of this run not finished yet", ()),
    "mvboost_stage_items_in": ("counter", "items that entered a stage's worker", ("stage",)),
    "mvboost_stage_items_out": ("counter", "items that left a stage (processed or rejected there)", ("stage",)),
    "mvboost_stage_seconds": ("counter", "busy seconds per stage, summed over items", ("stage",)),
    "mvboost_gpu_seconds_busy": ("counter", "busy GPU-seconds: stage seconds x the GPUs its worker holds", ("stage",)),
    "mvboost_gpu_seconds_held": ("counter", "GPU-seconds held by this job's actors, busy or idle (sampled)", ()),
    "mvboost_usd": ("counter", "$ of the GPU-seconds held, at job.gpu_hour_usd", ()),
}
JOB_TAG = "JobId"
#: the ``reason`` of the zero series registered for each stage before anything is rejected
NO_REASON = "none"

#: what Ray Data exports and the dashboard plots (checked against a live endpoint by the tests)
RAY_DATA_METRICS = ("ray_data_operator_queued_blocks", "ray_data_num_tasks_running")


def series_name(name: str) -> str:
    """The name Prometheus sees: ``ray_`` prefix, ``_total`` for counters."""
    return f"ray_{name}_total" if METRICS[name][0] == "counter" else f"ray_{name}"


def prometheus_names() -> set[str]:
    return {series_name(n) for n in METRICS}


def prometheus_labels() -> dict[str, set[str]]:
    """Prometheus name -> the labels our code sets on it."""
    return {series_name(n): {JOB_TAG, *tags} for n, (_, _, tags) in METRICS.items()}


def current_job_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_job_id() or "unknown"
    except Exception:  # noqa: BLE001 - outside a Ray job
        return "unknown"


def _make(name: str, job_id: str):
    from ray.util.metrics import Counter, Gauge

    kind, desc, tags = METRICS[name]
    metric = (Counter if kind == "counter" else Gauge)(name, description=desc, tag_keys=(JOB_TAG, *tags))
    metric.set_default_tags({JOB_TAG: job_id})
    return metric


def _register(metric, tags: dict | None = None) -> None:
    """A series at 0 (Counter.inc refuses 0; the recorder takes it)."""
    try:
        metric._record(0.0, tags={**metric._default_tags, **(tags or {})})  # noqa: SLF001 - no public "declare at 0"
    except Exception:  # noqa: BLE001 - a missing series is cosmetic
        pass


def reason_label(reason: str) -> str:
    """The ``reason`` label of the rejection counter: the reason's group, bounded in length."""
    from mvboost.pipeline.summary import reason_group

    return reason_group(reason or "")[:60] or "unknown"


def exported_values(text: str, job_id: str) -> dict[str, float]:
    """Prometheus text -> the sum of every series of ``job_id`` per metric name (``_total`` kept)."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get(JOB_TAG) == job_id and sample.name.startswith("ray_mvboost_"):
                sums[sample.name] = sums.get(sample.name, 0.0) + float(sample.value)
    return sums


def node_metrics_url() -> str:
    """The metrics endpoint of the node this process runs on (the one its metrics are exported to)."""
    import ray

    me = ray.get_runtime_context().get_node_id()
    for n in ray.nodes():
        if n.get("NodeID") == me:
            return f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
    raise RuntimeError("this process's node is not in ray.nodes()")


def fetch(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - our own node's endpoint
        return r.read().decode()


def matches(values: dict[str, float], expected: dict[str, float]) -> bool:
    return all(abs(values.get(k, float("nan")) - v) < 1e-6 for k, v in expected.items())


class JobMetrics:
    """Driver-side metrics; all series of the known stages registered at start. ``counts`` mirrors what
    the exact counters hold, so the final export can be checked against the node's endpoint."""

    def __init__(self, stages: list[str], gpu_share: dict[str, float], gpu_hour_usd: float = 0.0):
        self.share = gpu_share
        self.price = gpu_hour_usd
        self.job_id = current_job_id()
        self.m = {name: _make(name, self.job_id) for name in METRICS
                  if name not in ("mvboost_stage_items_in", "mvboost_stage_items_out")}
        for name in ("mvboost_items_accepted", "mvboost_shards_committed", "mvboost_gpu_seconds_held", "mvboost_usd"):
            _register(self.m[name])
        for s in stages:
            _register(self.m["mvboost_items_rejected"], {"stage": s, "reason": NO_REASON})
            for name in ("mvboost_items_retried", "mvboost_stage_seconds", "mvboost_gpu_seconds_busy"):
                _register(self.m[name], {"stage": s})
        self.counts = {"accepted": 0, "rejected": 0, "shards": 0, "pending": 0}
        self.m["mvboost_items_pending"].set(0)

    def pending(self, n: int) -> None:
        self.counts["pending"] = n
        self.m["mvboost_items_pending"].set(n)

    def item(self, row: dict) -> None:
        if row.get("status") == "ok":
            self.counts["accepted"] += 1
            self.m["mvboost_items_accepted"].inc()
        elif row.get("status") == "failed":  # not finished: the item goes through again
            self.m["mvboost_items_retried"].inc(tags={"stage": row.get("reject_stage") or "unknown"})
            return
        else:
            self.counts["rejected"] += 1
            self.m["mvboost_items_rejected"].inc(tags={"stage": row.get("reject_stage") or "unknown",
                                                       "reason": reason_label(row.get("reject_reason"))})
        for k, v in row.items():
            if k.startswith("t_") and v:
                stage = k[2:]
                self.m["mvboost_stage_seconds"].inc(float(v), tags={"stage": stage})
                if self.share.get(stage):
                    self.m["mvboost_gpu_seconds_busy"].inc(float(v) * self.share[stage], tags={"stage": stage})

    def shard(self, _shard: int | None = None) -> None:
        """A shard's commit has finished."""
        self.counts["shards"] += 1
        self.m["mvboost_shards_committed"].inc()

    def held(self, gpu_seconds: float) -> None:
        if gpu_seconds > 0:
            self.m["mvboost_gpu_seconds_held"].inc(gpu_seconds)
            if self.price:
                self.m["mvboost_usd"].inc(gpu_seconds * self.price / 3600)

    def expected(self) -> dict[str, float]:
        """The exact series as Prometheus must see them, summed over this job's processes."""
        c = self.counts
        return {"ray_mvboost_items_accepted_total": c["accepted"], "ray_mvboost_items_rejected_total": c["rejected"],
                "ray_mvboost_shards_committed_total": c["shards"], "ray_mvboost_items_pending": c["pending"]}

    def final_export(self, url: str | None = None, timeout_s: float = 30.0) -> bool:
        """Wait until the node's metrics endpoint shows this job's final counts (at most ``timeout_s``:
        about one ``metrics_report_interval_ms`` of Ray). False, with a warning, if they never did."""
        want = self.expected()
        values: dict[str, float] = {}
        deadline = time.monotonic() + timeout_s
        try:
            url = url or node_metrics_url()
        except Exception as e:  # noqa: BLE001 - no node to read: the counts cannot be checked
            log.warning("metrics: the node's endpoint is unknown (%s)", e)
            return False
        while True:
            try:
                values = exported_values(fetch(url), self.job_id)
            except Exception as e:  # noqa: BLE001 - the endpoint is down: the counts cannot be checked
                log.warning("metrics: the node's endpoint cannot be read (%s)", e)
                return False
            if matches(values, want):
                return True
            if time.monotonic() > deadline:
                log.warning("metrics: the final counts did not reach the node's endpoint within %.0f s "
                            "(exported %s, counted %s)", timeout_s, values, want)
                return False
            time.sleep(0.2)


class StageMetrics:
    """Worker-side: items in and out of each stage (one instance per worker process)."""

    _instance = None

    def __init__(self):
        job_id = current_job_id()
        self.items_in = _make("mvboost_stage_items_in", job_id)
        self.items_out = _make("mvboost_stage_items_out", job_id)

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


def job_gpus_held(job_id: str) -> float:
    """GPUs held right now by the live actors of ``job_id`` (the job's GPU stages run as actor pools), read
    from the GCS's actor table: other jobs' GPUs on a shared cluster are not counted."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    alive = gcs_pb2.ActorTableData.ActorState.Value("ALIVE")
    total = 0.0
    for raw in state._global_state_accessor.get_actor_table(None, None):  # noqa: SLF001 - no public API has resources
        actor = gcs_pb2.ActorTableData.FromString(raw)
        if actor.state == alive and actor.job_id.hex() == job_id:
            total += float(actor.required_resources.get("GPU", 0.0))
    return total


class GpuHeldSampler:
    """Samples the GPUs this job's actors hold every ``interval`` seconds and integrates them into GPU-seconds
    held: what the job pays for, busy or idle."""

    def __init__(self, on_sample=None, interval: float = 2.0, job_id: str | None = None):
        self.job_id = job_id or current_job_id()
        self.on_sample, self.interval = on_sample, interval
        self.total = 0.0
        self._warned = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-held-sampler", daemon=True)

    def held_now(self) -> float:
        return job_gpus_held(self.job_id)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            try:
                gs = self.held_now() * (now - last)
            except Exception as e:  # noqa: BLE001 - a failed sample is skipped, said once
                if not self._warned:
                    log.warning("metrics: GPUs held cannot be sampled (%s)", e)
                    self._warned = True
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


#: where Ray's dashboard writes its Prometheus service discovery file (under Ray's temp folder)
SERVICE_DISCOVERY_FILE = "prom_metrics_service_discovery.json"


class MetricsEndpoint:
    """A fixed loopback port for the embedded local Ray's metrics: serves the node's Prometheus endpoint
    (``/metrics``) on ``127.0.0.1:port`` and writes Prometheus's service discovery file where Ray's
    dashboard would (``<ray temp dir>/prom_metrics_service_discovery.json``), so the file_sd snippet of
    Ray's docs finds a local run too. It knows when it was scraped: :meth:`wait_final_scrape` lets the job
    end only after a scrape has read the final counts (the local Ray, and its endpoint, end with the job)."""

    def __init__(self, port: int, upstream: str, job_id: str):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.upstream, self.job_id = upstream, job_id
        self.final: dict[str, float] | None = None
        self.final_scraped = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                try:
                    body = fetch(endpoint.upstream)
                except Exception as e:  # noqa: BLE001 - a scrape of a stopping node
                    self.send_error(503, str(e)[:200])
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if endpoint.final is not None and matches(exported_values(body, endpoint.job_id), endpoint.final):
                    endpoint.final_scraped.set()

            def log_message(self, *args):  # no access log on the console
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics-endpoint", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def write_service_discovery(self, folder: str) -> str:
        import fsspec

        from mvboost.io.files import write_atomic

        path = os.path.join(folder, SERVICE_DISCOVERY_FILE)
        doc = [{"labels": {"job": "ray"}, "targets": [f"127.0.0.1:{self.port}"]}]
        write_atomic(fsspec.filesystem("file"), path, json.dumps(doc).encode())
        return path

    def wait_final_scrape(self, final: dict[str, float], timeout_s: float) -> bool:
        """Block until a scrape has returned ``final`` (at most ``timeout_s``); False if none came."""
        self.final = dict(final)
        return self.final_scraped.wait(timeout_s)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(port: int, local: bool, job_id: str) -> MetricsEndpoint | None:
    """``ray.metrics_port`` for the embedded local Ray: the endpoint and its service discovery file (one line
    says where). On a cluster the nodes export on their own ports: one line says so, nothing is served."""
    if not port:
        return None
    if not local:
        print(f"metrics: ray.metrics_port={port} applies to the embedded local Ray; on a cluster Prometheus "
              "scrapes every node (file_sd: /tmp/ray/prom_metrics_service_discovery.json on the head)", flush=True)
        return None
    import ray

    from mvboost.config import ConfigError

    try:
        endpoint = MetricsEndpoint(port, node_metrics_url(), job_id)
    except OSError as e:
        raise ConfigError(f"ray.metrics_port={port}: cannot listen on 127.0.0.1:{port} ({e.strerror or e})") from None
    temp_dir = os.path.dirname(ray._private.worker._global_node.get_session_dir_path())  # noqa: SLF001
    sd = endpoint.write_service_discovery(temp_dir)
    print(f"metrics: {endpoint.url} (Prometheus service discovery: {sd})", flush=True)
    return endpoint


def publish_final(metrics: JobMetrics, endpoint: MetricsEndpoint | None, timeout_s: float) -> None:
    """The job's last word to Prometheus: the final counts exported to the node and, with a local endpoint, read by
    one scrape before the local Ray ends with the job."""
    if not metrics.final_export(endpoint.upstream if endpoint else None, timeout_s=timeout_s):
        return
    if endpoint is not None:
        if not endpoint.wait_final_scrape(metrics.expected(), timeout_s):
            log.warning("metrics: no scrape of %s read the final counts within %.0f s (ray.metrics_wait_s)",
                        endpoint.url, timeout_s)
        endpoint.close()
