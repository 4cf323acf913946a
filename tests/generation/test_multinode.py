"""The jobs on a real multi-node Ray: a head without GPUs and three GPU worker nodes, each its own raylet and
object store, on loopback with token authentication (``ray_jobs.local_cluster``); shared output on a local S3
(moto's server). Generation across nodes with a GPU node killed mid-run loses nothing and equals a single-node run
sample for sample; training survives the loss of one of its two nodes."""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, adapters, assert_every_item_once, job_env, samples, wait_for_first_commit

pytestmark = pytest.mark.ray

CONFIG = REPO / "ray_jobs" / "configs" / "generate_1gpu_smoke.yaml"
#: the production layout (fused GPU group, text-to-image beside it) pinned to the GPU node group by its custom
#: resource, as cluster/aws.yaml's worker group declares it; one text-to-image actor and one matting task per node
#: at a time (each process holds torch, ~350-700 MB: the test stays near 4 GB)
PLACEMENT = ["--set", "text_to_image.resources.custom={mvboost_gpu: 0.25}",
             "--set", "text_to_image.resources.max_actors=1",
             "--set", "era3d.resources.custom={mvboost_gpu: 0.75}", "--set", "matting.resources.num_cpus=1",
             "--set", "job.progress=false", "--set", "ray.check_layout=strict"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_cache):
    from ray_jobs.local_cluster import LocalCluster

    d = tmp_path_factory.mktemp("cluster")
    # the raylets stop idle workers at once instead of keeping one per CPU: a task worker that ran the matting
    # holds torch (~400 MB) while idle, and the test must stay under 4 GB
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_num_workers_soft_limit", "0")
        with LocalCluster(workers=3, worker_gpus=1, worker_cpus=2, head_cpus=1, resources={"mvboost_gpu": 1},
                          token_file=d / "token", log=d / "cluster.log") as c:
            yield c


def generate_cmd(out, opts, *extra):
    return [sys.executable, "-m", "ray_jobs.generate", "--config", str(CONFIG), "--output", out,
            "--set", f"job.storage_options={json.dumps(opts)}", *PLACEMENT, *extra]


def test_node_loss_during_generation_loses_nothing_and_equals_a_single_node_run(cluster, moto_s3, tiny_cache,
                                                                              tmp_path):
    """The production layout across three GPU nodes, commits as Ray tasks anywhere, shards on S3. A GPU node is
    SIGKILLed (raylet and workers) once the first shard is committed: the job finishes on the two nodes left (Ray
    Data restarts the lost actors elsewhere and re-runs their tasks; a commit task lost with its node is retried,
    and a commit is idempotent), every planned item accepted exactly once, every manifest valid, nothing staged left
    visible; and the output equals, key for key, member for member, byte for byte (timings aside), the same plan
    run in one process: an item run again on another node after the loss is the same item. A replacement node
    joins for the next test."""
    import fsspec

    from mvboost.pipeline.job import load_job_config, run_in_process

    # one item per model call on both sides: an item's output does not depend on the other items of its batch
    # (checked in tests/models/test_era3d.py), but the batch size changes CPU float rounding (~2e-6), which the tiny
    # random UNet amplifies over its steps; so the comparison holds the batch size, and the torch threads, equal
    out, n = "s3://bkt/loss", 6
    one = ["text_to_image.resources.batch_size=1", "era3d.resources.batch_size=1", "matting.resources.batch_size=2",
           "write.resources.batch_size=2", f"job.n={n}", "job.shard_size=2"]
    proc = subprocess.Popen(generate_cmd(out, moto_s3, *[a for o in one for a in ("--set", o)]), cwd=REPO,
                            env=job_env(tiny_cache, cluster.env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    fs, root = fsspec.core.url_to_fs(out, **moto_s3)
    victim = cluster.workers[0]
    try:
        wait_for_first_commit(proc, fs, root)
        cluster.kill(victim)
        log, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.add()  # the replacement, as an autoscaler would bring one
    assert_every_item_once(proc, log, out, moto_s3, CONFIG, n, 2)
    cfg = load_job_config(CONFIG, [f"job.output={tmp_path / 'single'}", "job.progress=false", *one])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each Ray worker uses (one thread per reserved CPU, at least one)
    try:
        assert run_in_process(cfg).accepted == n
    finally:
        torch.set_num_threads(threads)
    multi, single = samples(out, moto_s3), samples(str(tmp_path / "single"), {})
    assert sorted(multi) == sorted(single) and len(multi) == n
    for key in single:
        assert multi[key].keys() == single[key].keys()
        for member in single[key]:
            assert multi[key][member] == single[key][member], f"{key}.{member} differs"


def train(cluster, cache, shards, opts, out, *extra, wait=True):
    cmd = [sys.executable, "-m", "train.launch", "--config", str(REPO / "train" / "configs" / "lora_smoke.yaml"),
           "--data", shards, "--output", str(out), "--set", f"data.storage_options={json.dumps(opts)}",
           "--set", f"run.storage_options={json.dumps(opts)}",
           "--set", "train.steps=4", "--set", "train.checkpoint_every=2", "--set", "run.max_failures=2",
           "--set", "run.placement_strategy=STRICT_SPREAD", "--set", "run.resources_per_worker={mvboost_gpu: 1}",
           *extra]
    env = dict(job_env(cache, cluster.env), TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", ""))
    if wait:
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_node_loss_during_training_resumes_on_the_remaining_nodes(cluster, moto_s3, smoke_shards, ds_env,
                                                                    tiny_cache, tmp_path, embedded_lora_run):
    """Two Ray Train workers, one per GPU node (STRICT_SPREAD), shards read from S3 and checkpoints written to S3
    (nodes share no disk). The node of worker 1 is SIGKILLed during step 3: Ray Train restarts the worker group on
    the nodes left and resumes from the step-2 checkpoint on S3; the final adapter equals an uninterrupted run's
    (the same config and data launched on the embedded Ray, conftest.embedded_lora_run) to rtol 1e-4, atol 1e-5."""
    import fsspec

    fs, _ = fsspec.core.url_to_fs("s3://bkt/shards", **moto_s3)
    fs.put(f"{smoke_shards}/", "bkt/shards/", recursive=True)
    runs = "s3://bkt/runs"
    downloads = set(Path(tempfile.gettempdir()).glob("checkpoint_tmp_*"))  # where Ray downloads a checkpoint to
    lost = train(cluster, tiny_cache, "s3://bkt/shards", moto_s3, runs, "--set", "run.name=lost",
                 "--set", "run.step_hook=tests.faults:record_node_and_pause_once_at_step_3", wait=False)
    try:
        marker = "bkt/runs/lost/.node-rank1"
        deadline = time.time() + 400
        while time.time() < deadline and lost.poll() is None:
            fs.invalidate_cache()
            if fs.exists(marker):
                break
            time.sleep(0.5)
        assert lost.poll() is None and fs.exists(marker), "training ended before a node could be killed"
        time.sleep(0.5)
        victim = fs.cat(marker).decode().strip()
        assert victim in cluster.workers
        cluster.kill(victim)
        log, _ = lost.communicate(timeout=600)
    finally:
        if lost.poll() is None:
            lost.kill()
        cluster.add()
    assert lost.returncode == 0, log[-4000:]
    assert "resumed from step 2" in log and "done: step 4" in log and "checkpoint s3://bkt/runs/lost/" in log
    # the resumed workers' download of the step-2 checkpoint is gone with the run, not left behind in /tmp
    assert set(Path(tempfile.gettempdir()).glob("checkpoint_tmp_*")) == downloads
    r = embedded_lora_run.result
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    fs.invalidate_cache()
    fs.get("bkt/runs/lost/", str(tmp_path / "lost"), recursive=True)
    a, b = adapters(tmp_path / "lost"), adapters(embedded_lora_run.run_dir)
    assert 4 in a and set(a[4]) == set(b[4])
    for k, v in b[4].items():
        torch.testing.assert_close(a[4][k], v, rtol=1e-4, atol=1e-5)
