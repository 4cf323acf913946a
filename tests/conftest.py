import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def spec_dir() -> Path:
    """The official checkpoints' state-dict key lists (key, shape, numel, marker), kept as test data: facts taken
    from the published checkpoints (Era3D MacLab-Era3D-512-6view unet/, LGM model_fp16_fixrot, OpenLRM base)."""
    return REPO / "tests" / "data" / "state_dicts"


def read_key_list(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """key -> (shape, marker) from the official checkpoints' state-dict key lists (tests/data/state_dicts)."""
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        shape = tuple(int(x) for x in parts[1].strip("()").split(",") if x.strip())
        out[parts[0]] = (shape, parts[3].strip() if len(parts) > 3 else "")
    return out


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """One MVBOOST_CACHE for the session: tiny models are built once, then loaded from disk."""
    path = tmp_path_factory.mktemp("mvboost-cache")
    old = os.environ.get("MVBOOST_CACHE")
    os.environ["MVBOOST_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MVBOOST_CACHE", None)
    else:
        os.environ["MVBOOST_CACHE"] = old


SMOKE = REPO / "ray_jobs" / "configs" / "generate_smoke.yaml"
TRAIN_SMOKE = REPO / "train" / "configs" / "lora_smoke.yaml"


@pytest.fixture(scope="session")
def smoke_shards(tiny_cache, tmp_path_factory):
    """Shards made by the generation job's smoke config (in-process), for the training tests."""
    from mvboost.pipeline.job import load_job_config, run_in_process

    out = tmp_path_factory.mktemp("shards") / "smoke"
    s = run_in_process(load_job_config(SMOKE, [f"job.output={out}", "job.n=4", "job.progress=false"]))
    assert s.accepted == 4
    return out


@pytest.fixture(scope="session")
def ds_env(tmp_path_factory):
    """An empty extensions folder of the session's for DeepSpeed's JIT-built ops: training on CPU builds none
    (mvboost.train.loop.skip_cpu_shm_comm_build), and a test can check it (workers get it from job_env/local Ray)."""
    path = tmp_path_factory.mktemp("torch_extensions")
    os.environ["TORCH_EXTENSIONS_DIR"] = str(path)
    return path


def call_main(module: str, *args) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` run as ``<module>.main(args)`` in this process, its printed output captured: the
    exit code and the lines a user sees, without a new interpreter's imports (for runs that start no Ray)."""
    import contextlib
    import importlib
    import io

    out, err = io.StringIO(), io.StringIO()
    argv = [str(a) for a in args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = importlib.import_module(module).main(argv)
        except SystemExit as e:  # argparse's own errors
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
    return subprocess.CompletedProcess([module, *argv], code, out.getvalue(), err.getvalue())


def job_env(cache, base: dict | None = None) -> dict:
    """The environment of a job started as a subprocess: the session's model cache, the Hub offline, this checkout
    importable (Ray workers too), Ray's log de-duplication off. From ``base`` (a cluster's own environment, its
    address and token) or, by default, this process's environment without an inherited Ray address and with Ray's
    token auth off (the job starts its own local Ray)."""
    env = dict(os.environ if base is None else base, MVBOOST_CACHE=str(cache), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO), RAY_DEDUP_LOGS="0")
    if base is None:
        env["RAY_AUTH_MODE"] = "disabled"
        env.pop("RAY_ADDRESS", None)
    return env


def run_generate(*args, config: Path = SMOKE, env: dict | None = None, timeout: float = 300):
    """``python -m ray_jobs.generate --config <config> <args>`` from the checkout (output captured)."""
    return subprocess.run([sys.executable, "-m", "ray_jobs.generate", "--config", str(config), *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def shard_keys(out: Path) -> list[str]:
    """Every sample key in every committed shard tar under ``out`` (reads each tar fully)."""
    import tarfile

    keys = []
    for tar in sorted(out.glob("shard-*.tar")):
        with tarfile.open(tar) as tf:
            names = tf.getnames()
            for m in tf.getmembers():
                tf.extractfile(m).read()
        keys.extend(sorted({n.split(".", 1)[0] for n in names}))
    return keys


@pytest.fixture
def moto_s3():
    """A local S3 (moto) on 127.0.0.1 with bucket "bkt"; yields fsspec storage options for s3fs."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s",
                     region_name="us-east-1").create_bucket(Bucket="bkt")
        yield {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    finally:
        server.stop()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tagged_env(env: dict) -> tuple[dict, str]:
    """``env`` plus a fresh reaper tag (ray_jobs/reaper.py): every process started with it, and everything those
    start (a ``ray start`` head, its GCS, raylet, agents and workers), carries the tag, so ``reap(tag)`` stops
    exactly that cluster and nothing else on the machine (``ray stop`` would stop every Ray here: a developer's
    own cluster, another test run's)."""
    from ray_jobs.reaper import tag_environment

    env = dict(env)
    return env, tag_environment(env)


def ray_start_head(gcs: int, dashboard: int) -> list[str]:
    """``ray start --head`` options for a head that shares nothing with another on this machine: every port fixed
    by default (GCS 6379, dashboard 8265, dashboard agent 52365, Ray client 10001) on a free one, and a temp dir of
    its own (Ray's job supervisor resolves the cluster it runs a job's driver on through ``<temp dir>/
    ray_current_cluster``, which every ``ray start`` rewrites: with the shared default, another head started
    meanwhile on this machine would get the job). The folder's path is short: Ray's sockets live under it."""
    import tempfile

    return ["--head", f"--port={gcs}", f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}", f"--temp-dir={tempfile.mkdtemp(prefix='ray-', dir='/tmp')}"]


def is_loopback(host: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(host.split("%")[0])
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def listeners(pids) -> set[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of these processes."""
    import psutil

    names = {}
    for pid in pids:
        try:
            names[pid] = psutil.Process(pid).name()
        except psutil.Error:
            pass
    return {(c.laddr.ip, c.laddr.port, names[c.pid]) for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in names}


def watch_listeners(proc, seen: set, interval: float = 0.3):
    """Poll the listeners of ``proc`` and its descendants into ``seen`` until it exits; returns its code."""
    import psutil

    while proc.poll() is None:
        try:
            seen |= listeners([proc.pid] + [k.pid for k in psutil.Process(proc.pid).children(recursive=True)])
        except psutil.Error:
            pass
        time.sleep(interval)
    return proc.returncode


def run_launch(shards, tmp_path, *extra, timeout=900, listening: set | None = None):
    """Run train.launch on the embedded Ray; ``listening`` collects its processes' TCP listeners."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "train.launch", "--config", str(TRAIN_SMOKE), "--data", str(shards),
           "--output", str(tmp_path / "runs"), *extra]
    if listening is None:
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err, text=True)
        try:
            code = watch_listeners(proc, listening)
        finally:
            proc.kill()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, code, out.read(), err.read())


@pytest.fixture(scope="session")
def embedded_lora_run(smoke_shards, ds_env, tmp_path_factory):
    """One launch of train/configs/lora_smoke.yaml (2 workers, ZeRO-2, 4 steps, checkpoints at 2 and 4) on the
    embedded Ray, its processes' TCP listeners watched: what the embedded-launch test checks, and the uninterrupted
    run the node-loss test compares its resumed run with."""
    from types import SimpleNamespace

    out = tmp_path_factory.mktemp("lora-run")
    before = set(Path(tempfile.gettempdir()).glob("mvboost-ckpt-*"))
    bound: set = set()
    r = run_launch(smoke_shards, out, "--set", "train.steps=4", listening=bound)
    return SimpleNamespace(result=r, bound=bound, run_dir=out / "runs" / "lora-smoke", ckpt_dirs_before=before)


def adapters(run_dir) -> dict:
    """step -> the LoRA adapter's tensors, for every checkpoint of a training run folder that holds one."""
    from safetensors.torch import load_file

    out = {}
    for c in sorted(Path(run_dir).glob("checkpoint_*")):
        f = c / "adapter" / "adapter_model.safetensors"
        if f.is_file():
            out[json.loads((c / "train_state.json").read_text())["step"]] = load_file(str(f))
    return out


def verified(store, shard: int):
    """The manifest of a committed shard of ``store`` after checking the tar against it (size, sha256,
    keys) with the library's one verifier; an AssertionError names the reason."""
    from mvboost.io.reader import verify_shard

    m = store.read_manifest(shard)
    assert m is not None, f"shard {shard} has no manifest (not committed)"
    with store.fs.open(store.path(m.shard), "rb") as f:
        reason = verify_shard(f, m)
    assert reason is None, f"{m.shard}: {reason}"
    return m


def read_tar(data: bytes) -> dict[str, bytes]:
    """Every member of a tar in memory, by name."""
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}


GLTF_VALIDATOR = "gltf-validator@2.0.0-dev.3.10"  # the Khronos glTF validator's npm package


@pytest.fixture(scope="session")
def gltf_validate(tmp_path_factory):
    """validate(path) -> the Khronos glTF validator's report (``issues``: numErrors, numWarnings, messages).
    The validator is installed from npm once per machine (~/.cache/mvboost-tests); skipped, with the reason,
    only where node/npm or the package cannot be had."""
    import fcntl
    import shutil
    import subprocess

    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("the glTF validator needs node and npm (apt-get install nodejs npm)")
    prefix = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mvboost-tests" / "gltf-validator"
    modules = prefix / "node_modules"
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix.parent / "gltf-validator.lock", "w") as lock:  # one install when two test runs ask at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (modules / "gltf-validator" / "package.json").is_file():
            r = subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(prefix),
                                GLTF_VALIDATOR], capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                pytest.skip(f"npm could not install {GLTF_VALIDATOR}: {(r.stderr or r.stdout).strip()[-300:]}")

    def validate(path) -> dict:
        r = subprocess.run([node, str(REPO / "tests" / "gltf_validate.js"), str(modules), str(path)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    return validate


def samples(url, opts) -> dict[str, dict[str, bytes]]:
    """key -> {member: bytes} of every committed shard, meta.json without its timings."""
    import fsspec

    from mvboost.io.sample import iter_tar

    fs, root = fsspec.core.url_to_fs(url, **opts)
    fs.invalidate_cache()  # s3fs instances are shared: a listing cached while the job ran is stale
    out = {}
    for tar in sorted(p for p in fs.ls(root, detail=False) if p.endswith(".tar")):
        with fs.open(tar, "rb") as f:
            for key, fields in iter_tar(f):
                meta = json.loads(fields["meta.json"])
                meta.pop("stage_seconds")
                fields["meta.json"] = json.dumps(meta, sort_keys=True).encode()
                assert key not in out, f"duplicate key {key}"
                out[key] = fields
    return out


def wait_for_first_commit(proc, fs, root: str, timeout: float = 400) -> None:
    """Until the running job ``proc`` has committed a shard manifest under ``root``; it must still be running."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        fs.invalidate_cache()
        if fs.exists(root) and any(p.endswith(".json") and "shard-" in p for p in fs.ls(root, detail=False)):
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the job ended before its node could be taken away"


def assert_every_item_once(proc, log: str, out: str, opts: dict, config, n: int, shard_size: int) -> None:
    """The job ended well: every planned item accepted exactly once, every manifest valid, nothing staged left."""
    import fsspec

    from mvboost.io.shards import OutputStore
    from mvboost.pipeline.job import load_job_config, plan_items

    assert proc.returncode == 0, log[-4000:]
    assert f"accepted {n}, rejected 0" in log
    keys = list(samples(out, opts))  # raises on a duplicate key
    planned = [it["item_id"] for it in plan_items(load_job_config(config, [f"job.output={out}", f"job.n={n}"]))]
    assert sorted(keys) == sorted(planned)
    store = OutputStore(out, opts)
    assert all(verified(store, s) for s in range(n // shard_size))
    fs, root = fsspec.core.url_to_fs(out, **opts)
    fs.invalidate_cache()
    assert [p for p in fs.find(root) if "_staging" in p or ".tmp-" in p] == []
