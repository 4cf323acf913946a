"""Monitoring as a user meets it: the dashboard's expressions against the metrics the code registers, the job's
series on the node's endpoint (scoped to the job), and a real Prometheus scraping a local run."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from conftest import REPO, SMOKE, free_port

pytestmark = pytest.mark.ray

DASHBOARD = REPO / "cluster" / "grafana_mvboost.json"


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, labels it is filtered on) for every metric of a PromQL expression."""
    out = []
    for m in re.finditer(r"\b(ray_[a-z_]+)(\{[^}]*\})?", expr):
        out.append((m.group(1), set(re.findall(r"([A-Za-z_]+)\s*[!=]~?", m.group(2) or ""))))
    return out


def test_every_dashboard_expression_names_registered_metrics_and_labels():
    """A renamed metric or label cannot silently empty a panel: every metric an expression reads is one the code
    registers (or Ray Data exports), every label it groups by is one the code sets, every metric is filtered by
    the dashboard's job, session and cluster variables, and every metric we define is plotted."""
    from ray_jobs.metrics import RAY_DATA_METRICS, prometheus_labels

    ours = prometheus_labels()
    known = set(ours) | set(RAY_DATA_METRICS)
    ray_common = {"SessionName", "ray_io_cluster"}  # Ray's labels on every series (KubeRay adds ray_io_cluster)
    plotted = set()
    for title, expr in dashboard_exprs():
        for metric, filtered in selectors(expr):
            assert metric in known, f"{title}: {metric} is not registered"
            plotted.add(metric)
            allowed = (ours[metric] if metric in ours else {"operator", "dataset"}) | ray_common
            assert filtered <= allowed, f"{title}: {metric} filtered on {filtered - allowed}"
            want = {"JobId", "SessionName", "ray_io_cluster"} if metric in ours else ray_common
            assert want <= filtered, f"{title}: {metric} not filtered by {want - filtered}"
        for grouped in re.findall(r"by \(([^)]*)\)", expr):
            for label in (x.strip() for x in grouped.split(",")):
                metrics = [m for m, _ in selectors(expr)]
                assert all(label in (ours.get(m) or {"operator"}) for m in metrics), f"{title}: by {label}"
    assert set(ours) - plotted == set()  # nothing defined goes unplotted
    assert set(RAY_DATA_METRICS) <= plotted
    names = {v["name"] for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    assert {"datasource", "JobId", "SessionName", "Cluster"} <= names


def test_the_expression_check_catches_a_renamed_metric():
    """The check above is not vacuous: the expression the dashboard used to have (a metric no code registers)
    and a grouping label the metric does not carry are both found."""
    from ray_jobs.metrics import prometheus_labels

    ours = prometheus_labels()
    assert "ray_mvboost_rejections_total" not in ours
    assert "reason" in ours["ray_mvboost_items_rejected_total"] and "reason" not in ours["ray_mvboost_usd_total"]
    assert selectors('sum(rate(ray_mvboost_usd_total{JobId=~"$JobId"}[1m]))') == [("ray_mvboost_usd_total",
                                                                                    {"JobId"})]


def scrape(url: str) -> str:
    return urllib.request.urlopen(url, timeout=10).read().decode()


def test_series_carry_the_job_rejections_are_labelled_and_gpus_held_are_this_jobs_only(tmp_path):
    """On a local Ray with 2 (declared) GPUs: another job's actor holds 1 GPU, ours holds 0.5 -> GPUs held = 0.5,
    not the cluster's 1.5. Every series we export carries our JobId; rejections are labelled by stage and reason
    group, registered at 0 per stage; the final export waits until the endpoint shows the counted values."""
    import ray

    from ray_jobs.local_ray import connect
    from ray_jobs.metrics import JobMetrics, StageMetrics, exported_values, job_gpus_held, node_metrics_url

    connect(num_cpus=2, num_gpus=2)
    other = None
    try:
        address = ray.get_runtime_context().gcs_address
        script = tmp_path / "other_job.py"
        script.write_text(
            "import ray, sys, time\n"
            f"ray.init(address={address!r})\n"
            "@ray.remote(num_gpus=1, num_cpus=0)\n"
            "class Hog:\n    def ready(self): return 1\n"
            "h = Hog.remote(); ray.get(h.ready.remote()); print('holding', flush=True); time.sleep(120)\n")
        other = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                                 env=dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"))
        assert other.stdout.readline().strip() == "holding"

        @ray.remote(num_gpus=0.5, num_cpus=0)
        class Ours:
            def ready(self):
                return 1

        ours = Ours.remote()
        ray.get(ours.ready.remote())
        m = JobMetrics(["era3d", "lgm", "write"], {"era3d": 0.75, "lgm": 0.75}, gpu_hour_usd=3.6)
        assert ray.cluster_resources()["GPU"] - ray.available_resources().get("GPU", 0) == 1.5
        assert job_gpus_held(m.job_id) == 0.5
        StageMetrics.get().register(["era3d", "lgm"])
        url = node_metrics_url()
        m.item({"status": "ok", "t_era3d": 2.0, "t_lgm": 0.5})
        m.item({"status": "rejected", "reject_stage": "lgm", "reject_reason": "NaN in LGM output (3 of 4)"})
        m.shard(0)
        m.held(10.0)
        m.pending(3)
        assert m.final_export(url, timeout_s=20)
        text = scrape(url)
        values = exported_values(text, m.job_id)
        assert values["ray_mvboost_items_accepted_total"] == 1 and values["ray_mvboost_items_rejected_total"] == 1
        assert values["ray_mvboost_shards_committed_total"] == 1 and values["ray_mvboost_items_pending"] == 3
        assert abs(values["ray_mvboost_gpu_seconds_busy_total"] - 1.875) < 1e-9  # (2.0 + 0.5) x 0.75
        assert abs(values["ray_mvboost_usd_total"] - 0.01) < 1e-9  # 10 GPU-s x $3.6/h
        ours_lines = [ln for ln in text.splitlines() if ln.startswith("ray_mvboost_")]
        assert ours_lines and all(f'JobId="{m.job_id}"' in ln for ln in ours_lines)
        rejected = [ln for ln in ours_lines if ln.startswith("ray_mvboost_items_rejected_total")]
        assert any('stage="lgm"' in ln and 'reason="NaN in LGM output"' in ln and ln.endswith(" 1.0")
                   for ln in rejected)
        assert any('stage="write"' in ln and 'reason="none"' in ln and ln.endswith(" 0.0") for ln in rejected)
        assert any(ln.startswith("ray_mvboost_stage_items_in_total") and 'stage="era3d"' in ln for ln in ours_lines)
        m.item({"status": "ok"})  # the last count of a run: the final export waits until it is on the endpoint
        assert m.final_export(url, timeout_s=20)
        assert exported_values(scrape(url), m.job_id)["ray_mvboost_items_accepted_total"] == 2
    finally:
        if other is not None:
            other.kill()
            other.wait()
        ray.shutdown()


def prometheus_query(base: str, path: str, **params) -> list:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    doc = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert doc["status"] == "success", doc
    return doc["data"]["result"] if isinstance(doc["data"], dict) else doc["data"]


@pytest.fixture()
def prometheus(tmp_path):
    """A real Prometheus (Debian's package) scraping every second what Ray's service discovery file lists."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (Debian: apt-get install prometheus; .ci/run does)")
    sd = "/tmp/ray/prom_metrics_service_discovery.json"
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                   "scrape_configs:\n  - job_name: ray\n"
                   f"    file_sd_configs: [{{files: ['{sd}'], refresh_interval: 1s}}]\n")
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "prometheus.log", "w"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200:
                break
        except OSError:
            pass
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
        time.sleep(0.2)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def test_a_real_prometheus_sees_the_exact_counts_of_a_local_run_and_every_panel_has_data(tmp_path, tiny_cache,
                                                                                     prometheus):
    """The smoke chain, 16 items, with --metrics-port: the final counters Prometheus stored equal the job's
    summary, the job filter lists this job, and every dashboard expression returns data over the run."""
    out, port = tmp_path / "out", free_port()
    env = dict(os.environ, MVBOOST_CACHE=str(tiny_cache), RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "ray_jobs.generate", "--config", str(SMOKE), "--output", str(out),
                        "--n", "16", "--metrics-port", str(port), "--set", "job.progress=false"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    t1 = time.time()
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"metrics: http://127.0.0.1:{port}/metrics (Prometheus service discovery: " in r.stdout
    assert "final counts" not in r.stderr  # no warning: the final export and the final scrape both happened
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requested"] == 16
    jobs = prometheus_query(prometheus, "label/JobId/values")
    assert len(jobs) >= 1
    job = jobs[-1]

    def final(metric: str) -> float:
        res = prometheus_query(prometheus, "query", query=f'sum(last_over_time({metric}{{JobId="{job}"}}[10m]))',
                               time=f"{t1 + 1:.3f}")
        return float(res[0]["value"][1]) if res else float("nan")

    seen = {"accepted": final("ray_mvboost_items_accepted_total"),
            "rejected": final("ray_mvboost_items_rejected_total"),
            "shards": final("ray_mvboost_shards_committed_total"), "pending": final("ray_mvboost_items_pending")}
    print("prometheus:", seen, "summary:", {k: summary[k] for k in ("accepted", "rejected", "shards")})
    assert seen == {"accepted": summary["accepted"], "rejected": summary["rejected"],
                    "shards": len(summary["shards"]), "pending": 0}
    empty = []
    for title, expr in dashboard_exprs():
        q = expr.replace("$JobId", job).replace("$SessionName", ".*").replace("$Cluster", ".*")
        res = prometheus_query(prometheus, "query_range", query=q, start=f"{t0:.3f}", end=f"{t1 + 1:.3f}", step="1")
        print(f"{title} | {expr[:60]}: {len(res)} series")
        if not res:
            empty.append((title, expr))
    assert empty == []
