"""The generation job on a real local Ray: smoke run, kill -9 and resume, and `ray job submit`."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import (
    REPO,
    SMOKE,
    call_main,
    free_port,
    job_env,
    ray_start_head,
    run_generate,
    shard_keys,
    tagged_env,
    verified,
)
from ray_jobs.reaper import reap

pytestmark = pytest.mark.ray


def run_job(out, cache, *extra, timeout=300):
    return run_generate("--output", out, *extra, env=job_env(cache), timeout=timeout)


def expected_keys(out, n):
    from mvboost.pipeline.job import load_job_config, plan_items

    return [it["item_id"] for it in plan_items(load_job_config(SMOKE, [f"job.output={out}", f"job.n={n}"]))]


def test_bad_config_and_missing_model_fail_at_start(tmp_path, tiny_cache):
    """The command itself (a new interpreter: the exit code and the line a user sees), then the same ``main`` in
    this process for the other refusals (conftest.call_main: the same code and printed lines); none starts Ray."""
    r = run_job(tmp_path / "o1", tiny_cache, "--set", "matting.treshold=3")
    assert r.returncode == 2 and "unknown config key(s) matting.treshold" in r.stderr and "Traceback" not in r.stderr
    r = call_main("ray_jobs.generate", "--config", SMOKE, "--output", tmp_path / "o2",
                  "--set", "text_to_image.model=nobody/no-such-model", "--set", "text_to_image.revision=v1.0")
    assert r.returncode == 2
    assert ("error: text_to_image: model 'nobody/no-such-model' at revision 'v1.0' is not in the local Hugging Face "
            "cache") in r.stderr and "`hf download nobody/no-such-model --revision v1.0`" in r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = call_main("ray_jobs.generate", "--config", SMOKE, "--output", blocker / "out")
    assert r.returncode == 2 and "is not writable" in r.stderr
    import ray

    assert not ray.is_initialized()


def kill_once(cmd, cache, ready, out, **env) -> dict:
    """Start the job (``env``: added to its environment), kill -9 its whole process group the moment ``ready()``
    holds, and return the shards that were committed then: tar name -> (mtime, bytes)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(job_env(cache), **env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.2)
        assert proc.poll() is None, "the job ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its local Ray and every worker
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("shard-*.tar")
            if (out / p.name.replace(".tar", ".json")).exists()}


def test_kill_and_resume_exactly_once(tmp_path, tiny_cache):
    """kill -9 of the whole job (driver, its local Ray, every worker) once its first shard is committed; the same
    command finishes: every item in exactly one shard, the committed shards untouched, nothing staged left. The
    items go through the synthetic stage (a second of work per item: the job is still running when its first shard
    is committed); the chain's stages under a kill are in the retry-round test below, the chain's output read by
    webdataset in tests/generation/test_job.py."""
    out = tmp_path / "out"
    n = 16
    args = ["--n", str(n)] + [a for kv in ("job.stages=[synthetic, write]", "synthetic.seconds=1.0",
                                           "synthetic.bytes=1000", "synthetic.resources.batch_size=2",
                                           "write.resources.batch_size=2") for a in ("--set", kv)]
    cmd = [sys.executable, "-m", "ray_jobs.generate", "--config", str(SMOKE), "--output", str(out), *args]
    committed = kill_once(cmd, tiny_cache, lambda: list(out.glob("shard-*.json")), out)
    assert 0 < len(committed) < n // 4
    r = run_job(out, tiny_cache, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"accepted {n}, rejected 0" in r.stdout, r.stdout[-2000:]
    keys = shard_keys(out)
    assert len(keys) == len(set(keys))  # no duplicate key anywhere
    assert sorted(keys) == sorted(expected_keys(out, n))
    for name, (mtime, data) in committed.items():  # finished shards were not rewritten
        assert (out / name).stat().st_mtime_ns == mtime and (out / name).read_bytes() == data
    from mvboost.io.shards import OutputStore

    store = OutputStore(str(out))
    assert all(verified(store, s) for s in range(n // 4))
    assert not list(out.rglob("*.tmp-*")) and not list((out / "_staging").glob("*"))


def test_ray_job_submit_to_a_token_authenticated_cluster(tmp_path, tiny_cache, smoke_shards):
    """The cluster configs' security as a user meets it: a head started with RAY_AUTH_MODE=token refuses the
    job-submission API without the token (plain HTTP and `ray job submit` with a wrong token) and runs the
    job submitted with it — with the runtime env of cluster/rayjob.yaml (Ray refused to merge it with ours
    before); the training job, submitted with a runtime env of its own whose env vars clash with ours (the job's
    win, one line says so) and add a new one, trains on the smoke chain's shards. (The generation job runs the
    synthetic stage: what is checked here is how jobs join the cluster; every CLI joins through one function,
    ``ray_jobs.local_ray.connect``.)"""
    import secrets
    import urllib.error
    import urllib.request

    import yaml

    token_file = tmp_path / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    env, tag = tagged_env(dict(job_env(tiny_cache), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file)))
    port = free_port()
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    start = subprocess.run([ray_bin, "start", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                            *ray_start_head(free_port(), port), "--num-cpus=2", "--include-dashboard=true",
                            "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
    if start.returncode:
        reap(tag)
    assert start.returncode == 0, start.stderr[-3000:]
    out = tmp_path / "out"
    rayjob_env = tmp_path / "rayjob_env.yaml"  # the shipped RayJob's runtimeEnvYAML, as KubeRay's submitter passes it
    rayjob_env.write_text(yaml.safe_load((REPO / "cluster" / "rayjob.yaml").read_text())["spec"]["runtimeEnvYAML"])
    head = [ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{port}", "--working-dir", str(REPO)]
    submit = [*head, "--runtime-env", str(rayjob_env), "--", sys.executable, "-m", "ray_jobs.generate",
              "--config", "ray_jobs/configs/generate_smoke.yaml", "--output", str(out),
              "--set", "job.stages=[synthetic, write]", "--set", "synthetic.bytes=1000"]
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:  # no token: the jobs API answers 401/403
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/jobs/", timeout=30)
        assert refused.value.code in (401, 403)
        wrong = dict(env, RAY_AUTH_TOKEN="not-the-token")
        wrong.pop("RAY_AUTH_TOKEN_PATH")
        bad = subprocess.run(submit, cwd=REPO, env=wrong, capture_output=True, text=True, timeout=120)
        assert bad.returncode != 0 and "accepted" not in bad.stdout, (bad.stdout + bad.stderr)[-2000:]
        assert not out.exists()
        sub = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
        assert sub.returncode == 0, (sub.stdout + sub.stderr)[-3000:]
        assert "accepted 8, rejected 0" in sub.stdout and "Failed to merge" not in sub.stdout + sub.stderr
        own = json.dumps({"env_vars": {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "MVBOOST_USER_FLAG": "x"}})
        train = subprocess.run([*head, "--runtime-env-json", own, "--", sys.executable, "-m", "train.launch",
                                "--config", "train/configs/lora_smoke.yaml", "--data", str(smoke_shards), "--output",
                                str(tmp_path / "runs"), "--set", "train.steps=2", "--set", "run.num_workers=1",
                                "--set", "train.lambda_lpips=0"],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
        assert train.returncode == 0 and "Failed to merge" not in train.stdout + train.stderr, \
            (train.stdout + train.stderr)[-3000:]
        said = [ln for ln in train.stdout.splitlines() if "runtime env: the job's own values win for" in ln]
        assert len(said) == 1 and "PYTHONPATH" in said[0] and "HF_HUB_OFFLINE" not in said[0], train.stdout[-2000:]
        assert list((tmp_path / "runs").rglob("adapter_model.safetensors")), train.stdout[-2000:]
        # the evaluation job refuses a relative output in Ray's copy of the working directory, as the others do
        rel = subprocess.run([*head, "--", sys.executable, "-m", "ray_jobs.evaluate", "--config",
                              "ray_jobs/configs/evaluate_smoke.yaml", "--output", "outputs/eval-rel"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=200)
        assert rel.returncode != 0 and "job.output 'outputs/eval-rel' is relative" in rel.stdout + rel.stderr, \
            (rel.stdout + rel.stderr)[-2000:]
    finally:
        reap(tag)  # this head and everything it started, not another Ray on this machine
    assert sorted(shard_keys(out)) == sorted(expected_keys(out, 8))


ONE_GPU_SMOKE = REPO / "ray_jobs" / "configs" / "generate_1gpu_smoke.yaml"
#: PYTHONPATH of a job whose Ray workers load the test fault hooks (tests/fault_site/sitecustomize.py)
FAULT_SITE_PATH = os.pathsep.join([str(REPO / "tests" / "fault_site"), str(REPO)])


def test_an_unschedulable_layout_fails_at_start_with_the_stages_named(tmp_path, tiny_cache):
    """The layout that used to sit at 0 items ("1/1 GPU, pending: 2 GPU") now stops at once, exit 2."""
    old = ["job.stages=[text_to_image, matting, era3d, lgm, render, refine, write]",
           "text_to_image.resources.num_gpus=1.0", "era3d.resources.num_gpus=1.0", "lgm.resources.num_gpus=0.5",
           "render.resources.num_gpus=0.5", "refine.resources.num_gpus=1.0"]
    cmd = [sys.executable, "-m", "ray_jobs.generate", "--config", str(ONE_GPU_SMOKE), "--output", str(tmp_path / "o")]
    for o in old:
        cmd += ["--set", o]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=REPO, env=job_env(tiny_cache), capture_output=True, text=True, timeout=180)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("error:"))
    assert "cannot be scheduled" in line and "1 GPUs" in line and "era3d" in line and "refine" in line
    assert time.time() - t0 < 120


def test_a_run_waiting_for_capacity_that_never_comes_stops_with_one_line_and_a_rerun_finishes(tmp_path, tiny_cache):
    """The GPU work pinned to a node group this Ray does not have, and only warned about (ray.check_layout=warn,
    as on an autoscaling cluster whose nodes never come): after ray.no_progress_timeout_s the job stops with one
    line and exit 3, no traceback. Once the capacity is there (the pin dropped), the rerun finishes the plan (run
    in process: what is checked is the output the stopped run left, which any run resumes)."""
    out = tmp_path / "o"
    job = ["job.stages=[synthetic, write]", "synthetic.actor=true", "synthetic.bytes=1000", "job.n=8",
           "job.progress=false"]
    waits = [*job, "ray.check_layout=warn", "ray.no_progress_timeout_s=6", "synthetic.resources.custom={spot_gpu: 1}"]
    stalled = run_job(out, tiny_cache, *(a for o in waits for a in ("--set", o)), timeout=240)
    assert stalled.returncode == 3, (stalled.stdout + stalled.stderr)[-3000:]
    assert "Traceback" not in stalled.stderr
    (line,) = [ln for ln in stalled.stderr.splitlines() if ln.startswith("error:")]
    assert "nothing moved for 6 s" in line and "MapBatches(synthetic)" in line and "8 of 8 items not done" in line
    r = call_main("ray_jobs.generate", "--config", SMOKE, "--output", out, "--in-process",
                  *(a for o in job for a in ("--set", o)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "accepted 8, rejected 0" in r.stdout
    assert sorted(shard_keys(out)) == sorted(expected_keys(out, 8))


SPY = r"""
import json, sys
from mvboost.io import shards
from mvboost.pipeline import state
seen = {"cols": set(), "max_row_bytes": 0, "rows": 0, "driver_read_bytes": 0}
consume, read = state.JobState.consume, shards.OutputStore.read

def spy_consume(self, batch, **kw):
    seen["cols"].update(batch)
    for i in range(len(batch["item_id"])):
        size = sum(len(v[i]) if isinstance(v[i], (bytes, str)) else 8 for v in batch.values())
        seen["max_row_bytes"] = max(seen["max_row_bytes"], size)
        seen["rows"] += 1
    return consume(self, batch, **kw)

def spy_read(self, path):
    data = read(self, path)
    seen["driver_read_bytes"] += len(data)
    return data

state.JobState.consume, shards.OutputStore.read = spy_consume, spy_read
from ray_jobs.generate import main
rc = main(sys.argv[1:])
print("SPY " + json.dumps({**seen, "cols": sorted(seen["cols"])}))
sys.exit(rc)
"""


def test_the_driver_never_receives_a_payload(tmp_path, tiny_cache):
    """12 items of 1 MB each through a synthetic stage: the driver iterates status rows of a few hundred
    bytes, reads no staged sample (shards are committed by Ray tasks), and every shard is committed."""
    out = tmp_path / "out"
    args = ["--config", str(SMOKE), "--output", str(out), "--n", "12",
            "--set", "job.stages=[synthetic, write]", "--set", "job.shard_size=4",
            "--set", "synthetic.bytes=1000000", "--set", "synthetic.reject_every=5",
            "--set", "synthetic.resources.batch_size=2", "--set", "write.resources.batch_size=2"]
    r = subprocess.run([sys.executable, "-c", SPY, *args], cwd=REPO, env=job_env(tiny_cache), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    spy = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("SPY "))[4:])
    assert spy["rows"] == 12
    assert set(spy["cols"]) <= {"item_id", "shard", "status", "reject_stage", "reject_reason", "staged_bytes",
                                "t_synthetic", "t_write"}
    assert spy["max_row_bytes"] < 1000
    assert spy["driver_read_bytes"] < 20_000  # job.json, manifests, rejects: never the 10 MB of samples
    assert "accepted 10, rejected 2" in r.stdout
    tars = sorted(out.glob("shard-*.tar"))
    assert len(tars) == 3 and sum(t.stat().st_size for t in tars) > 10_000_000
    assert not (out / "_staging").exists()  # no leftovers once every shard is committed
    # operators are named after their stages (progress bars, dashboard, Prometheus labels)
    assert "MapBatches(synthetic)" in r.stderr + r.stdout and "MapBatches(write)" in r.stderr + r.stdout


def test_production_layout_on_a_one_gpu_ray_retires_a_worker_with_a_broken_cuda_context(tmp_path, tiny_cache):
    """generate_1gpu_smoke.yaml: the production stage layout and GPU fractions (text-to-image 0.25, the fused
    era3d+lgm+render+refine group 0.75) on a local Ray that declares 1 GPU completes the chain, also when the fused
    worker's process breaks (a CUDA error in LGM on every batch from its first on) twice in a row: each broken
    worker hands its items back as infrastructure failures, exits before its next batch, Ray restarts it, and
    the failed items go through again. Every item is accepted, nothing is recorded as rejected."""
    out, faults = tmp_path / "out", tmp_path / "faults.txt"
    env = dict(job_env(tiny_cache), MVBOOST_FAULT_CUDA_FILE=str(faults), MVBOOST_FAULT_CUDA_TIMES="2",
               PYTHONPATH=FAULT_SITE_PATH)
    cmd = [sys.executable, "-m", "ray_jobs.generate", "--config", str(ONE_GPU_SMOKE), "--output", str(out),
           "--set", "job.progress=false"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    pids = faults.read_text().split()
    assert len(pids) == 2 and len(set(pids)) == 2  # two worker processes broke, one after the other
    retired = [ln for ln in r.stderr.splitlines()
               if "retires after an infrastructure error (RuntimeError: CUDA error" in ln]
    assert retired, r.stderr[-3000:]
    assert "accepted 8, rejected 0" in r.stdout and "infrastructure failures retried" in r.stdout, r.stdout
    assert "retrying" in r.stdout and "item(s) that failed for infrastructure reasons (round 1 of 2)" in r.stdout
    assert sorted(shard_keys(out)) == sorted(expected_keys(out, 8))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rejected"] == 0 and (out / "rejects.jsonl").read_text() == ""
    assert {"era3d", "lgm", "render", "refine"} <= set(summary["stage_seconds"])
    assert summary["gpu_seconds_busy"] > 0 and summary["gpu_seconds_held"] > 0


def test_retry_rejected_killed_and_rerun_commits_every_retried_item_exactly_once(tmp_path, tiny_cache, monkeypatch):
    """12 of 16 items recorded as rejected (in process); --retry-rejected on Ray, killed with -9 once its first
    retry shard is committed; the same command finishes the round: every item in exactly one shard, the shards
    committed before the kill untouched, no reject left."""
    from mvboost.io.shards import OutputStore
    from mvboost.pipeline.job import load_job_config, run_in_process
    from mvboost.pipeline.retry import read_rounds
    from mvboost.stages.base import Reject
    from mvboost.stages.text_to_image import TextToImageStage

    out, n = tmp_path / "out", 16
    sizes = [a for st in ("text_to_image", "matting", "era3d", "lgm", "render", "refine", "write")
             for a in (f"{st}.resources.batch_size=2",)]
    real = TextToImageStage.process
    monkeypatch.setattr(TextToImageStage, "process", lambda self, rows: [
        Reject("object too small: injected") if r["index"] % 4 else o for r, o in zip(rows, real(self, rows))])
    s = run_in_process(load_job_config(SMOKE, [f"job.output={out}", f"job.n={n}", "job.progress=false", *sizes]))
    assert (s.accepted, s.rejected) == (4, 12)
    monkeypatch.setattr(TextToImageStage, "process", real)
    args = ["--n", str(n), "--retry-rejected", "text_to_image", *[a for kv in sizes for a in ("--set", kv)]]
    cmd = [sys.executable, "-m", "ray_jobs.generate", "--config", str(SMOKE), "--output", str(out), *args]
    # the retry round fills shards 4-6 in whatever order its items finish; every commit after the first waits
    # (tests/fault_site: the test's fault hook) until the kill, so exactly one of them is committed when it comes
    retry_shards = [f"shard-{s:06d}" for s in (4, 5, 6)]
    committed = kill_once(cmd, tiny_cache, lambda: any((out / f"{s}.json").exists() for s in retry_shards), out,
                          MVBOOST_FAULT_HOLD_COMMITS=str(tmp_path / "first-commit"),
                          PYTHONPATH=FAULT_SITE_PATH)
    assert len([s for s in retry_shards if f"{s}.tar" in committed]) == 1, sorted(committed)
    r = run_job(out, tiny_cache, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "retry round 1 (rejects of 'text_to_image') was interrupted: finishing it (12 item(s)" in r.stdout
    assert "accepted 16, rejected 0" in r.stdout, r.stdout
    keys = shard_keys(out)
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(expected_keys(out, n))
    for name, (mtime, data) in committed.items():  # finished shards were not rewritten
        assert (out / name).stat().st_mtime_ns == mtime and (out / name).read_bytes() == data
    store = OutputStore(str(out))
    assert [len(r["items"]) for r in read_rounds(store)] == [12]
    assert all(verified(store, s) for s in range(7))
    assert (out / "rejects.jsonl").read_text() == ""
    assert not list(out.rglob("*.tmp-*")) and not list((out / "_staging").glob("*"))
