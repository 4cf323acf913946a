"""Scale-out without a cluster: dry runs, resources per stage, outputs as users read them, shard commits."""
import subprocess
import sys

import pytest

from conftest import REPO, SMOKE, call_main
from mvboost.config import ConfigError
from mvboost.pipeline.job import build_units, layout_units, load_job_config, run_in_process
from mvboost.pipeline.layout import LayoutError, check_layout

GPU_RANDOM = REPO / "ray_jobs" / "configs" / "generate_gpu_random.yaml"


def dry(out, *extra, config=GPU_RANDOM):
    return call_main("ray_jobs.generate", "--config", config, "--output", out, "--dry-run", *extra)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, tiny_cache):
    r = dry(tmp_path / "new", "--n", "1000", "--set", "job.shard_size=100")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "plan: 1,000 items in 10 shards of up to 100" in out and "new output: a run processes all 1,000" in out
    assert "era3d+lgm+render+refine      actor pool 1..as many as fit x (0.75 GPU, 2 CPU), batch 2" in out
    assert "era3d: random:era3d@main -> built random:era3d (built on first use)" in out
    assert "at least 1 GPUs and 3 CPUs at once" in out and "nothing was run or written" in out
    assert not (tmp_path / "new").exists()


def test_dry_run_on_a_partly_done_output_says_what_a_rerun_skips(tmp_path, tiny_cache):
    out = tmp_path / "out"
    run_in_process(load_job_config(SMOKE, [f"job.output={out}", "job.n=4", "job.progress=false",
                                           "job.stages=[synthetic, write]", "synthetic.bytes=10"]))
    r = dry(out, "--n", "8", "--set", "job.stages=[synthetic, write]", config=SMOKE)
    assert r.returncode == 2  # n differs from the output's plan: a run would be refused
    assert "problem: the output holds a job with a different plan (n: 4 there, 8 now" in r.stdout
    r = dry(out, "--n", "4", "--set", "job.stages=[synthetic, write]", config=SMOKE)
    assert r.returncode == 0 and "1 shards committed" in r.stdout and "a run skips 4 items and processes 0" in r.stdout


def test_memory_accelerator_and_custom_resources_reach_ray_and_the_layout_check():
    from ray_jobs.operators import resource_args as ray_resource_args

    cfg = load_job_config(GPU_RANDOM, ["era3d.resources.memory=32e9", "era3d.resources.accelerator_type=H100",
                                       "era3d.resources.custom={gpu_group_a: 1}"])
    res = cfg.era3d.resources
    assert ray_resource_args(res) == {"memory": 32e9, "accelerator_type": "H100", "resources": {"gpu_group_a": 1.0}}
    units = layout_units(build_units(cfg))
    fused = next(u for u in units if u.name.startswith("era3d"))
    assert fused.other == {"gpu_group_a": 1.0, "memory": 32e9, "accelerator_type:H100": 0.001}
    h100 = {"CPU": 16, "GPU": 1, "memory": 64e9, "accelerator_type:H100": 1.0, "gpu_group_a": 1}
    check_layout(units, [h100])
    with pytest.raises(LayoutError,
                       match=r"no node can hold one worker of era3d\+lgm\+render\+refine .*accelerator_type:H100"):
        check_layout(units, [{"CPU": 16, "GPU": 1, "memory": 64e9, "accelerator_type:A10G": 1.0, "gpu_group_a": 1}])
    with pytest.raises(LayoutError, match="memory"):
        check_layout(units, [{**h100, "memory": 16e9}])
    with pytest.raises(ConfigError, match="custom resources positive numbers"):
        load_job_config(GPU_RANDOM, ["era3d.resources.custom={a: 0}"])


def test_production_config_reserves_memory_and_fits_a_gpu_node():
    """Every production operator reserves host memory (Ray Data warned of 727 MiB used with 0 requested);
    with it the layout still fits one 1-GPU node of a GPU cloud (16 CPUs, 64 GB RAM)."""
    cfg = load_job_config(REPO / "ray_jobs" / "configs" / "generate.yaml")
    for stage in ("text_to_image", "matting", "era3d", "write"):
        assert getattr(cfg, stage).resources.memory > 0, stage
    check_layout(layout_units(build_units(cfg)), [{"CPU": 16, "GPU": 1, "memory": 64e9 * 0.7}])
    with pytest.raises(LayoutError, match=r"28.0 GB memory needed, 16.0 GB memory in the cluster"):
        check_layout(layout_units(build_units(cfg)), [{"CPU": 16, "GPU": 1, "memory": 16e9}])


def test_outputs_are_absolute_and_a_relative_one_in_rays_working_dir_copy_is_refused(tmp_path, monkeypatch):
    from mvboost.config import absolute_path

    monkeypatch.chdir(tmp_path)
    assert load_job_config(SMOKE).job.output == str(tmp_path / "outputs" / "smoke")
    assert absolute_path("s3://b/x", "job.output") == "s3://b/x"
    assert absolute_path("/abs/p", "job.output") == "/abs/p"
    copy = "/tmp/ray/session_1/runtime_resources/working_dir_files/_ray_pkg_abc"
    with pytest.raises(ConfigError, match="job.output 'outputs/smoke' is relative .* Ray's session cache"):
        absolute_path("outputs/smoke", "job.output", cwd=copy)
    assert absolute_path("/data/out", "job.output", cwd=copy) == "/data/out"
    assert absolute_path("data/in", cwd=copy) == f"{copy}/data/in"  # a path only read is not refused


def test_streamed_commit_equals_one_tar_of_all_members(tmp_path):
    import numpy as np

    from conftest import read_tar, verified
    from mvboost.io.sample import tar_members
    from mvboost.io.shards import OutputStore, tar_bytes

    rng = np.random.default_rng(0)
    items = {f"k{i}": {"payload.bin": rng.bytes(int(rng.integers(1, 3000))), "meta.json": b"{}"} for i in range(9)}
    store = OutputStore(str(tmp_path / "o"))
    for k, f in items.items():
        store.stage_sample(0, k, f)
    store.stage_reject(0, "kz", "synthetic", "no")
    m = store.commit_shard(0, sorted(items) + ["kz"])
    data = (tmp_path / "o" / "shard-000000.tar").read_bytes()
    whole = {}
    for k in sorted(items):
        whole.update(tar_members(k, items[k]))
    assert data == tar_bytes(whole) and len(data) == m.bytes and m.rejected == ["kz"]
    assert read_tar(data) == whole and verified(store, 0).samples == 9


def test_a_finished_output_is_recognised_without_starting_ray(tmp_path, tiny_cache, monkeypatch):
    """A rerun on a finished output reports it and never starts (or joins) a Ray."""
    import ray_jobs.generate as g

    out = tmp_path / "out"
    base = ["--config", SMOKE, "--output", out, "--n", "4", "--set", "job.stages=[synthetic, write]",
            "--set", "synthetic.bytes=10"]
    assert call_main("ray_jobs.generate", *base, "--in-process").returncode == 0

    def no_ray(cfg):
        raise AssertionError("Ray was started for a finished output")

    monkeypatch.setattr(g, "init_ray", no_ray)
    r = call_main("ray_jobs.generate", *base)  # the Ray executor, on a finished output
    assert r.returncode == 0, r.stderr[-2000:]
    assert "accepted 4" in r.stdout and "(4 were already finished before this run)" in r.stdout


def test_working_dir_upload_leaves_out_venvs_outputs_and_caches(tmp_path):
    """Ray's own packaging of a `--working-dir` honours the repo's .rayignore: a symlinked .venv,
    outputs/, shard tars and caches stay home; the code travels."""
    import shutil
    import zipfile

    pytest.importorskip("ray")
    from ray._private.runtime_env.packaging import _zip_files

    wd = tmp_path / "wd"
    (wd / "mvboost").mkdir(parents=True)
    (wd / "mvboost" / "a.py").write_text("x = 1\n")
    (wd / "outputs" / "smoke").mkdir(parents=True)
    (wd / "outputs" / "smoke" / "shard-000000.tar").write_bytes(b"0" * 1024)
    (wd / "loose.tar").write_bytes(b"0")
    real_venv = tmp_path / "venv-elsewhere"
    (real_venv / "lib").mkdir(parents=True)
    (real_venv / "lib" / "big.so").write_bytes(b"0" * 4096)
    (wd / ".venv").symlink_to(real_venv, target_is_directory=True)
    (wd / ".cache" / "mvboost").mkdir(parents=True)
    (wd / ".cache" / "mvboost" / "w.safetensors").write_bytes(b"0")
    shutil.copy(REPO / ".rayignore", wd / ".rayignore")
    _zip_files(str(wd), [], str(tmp_path / "pkg.zip"), include_gitignore=True)
    names = set(zipfile.ZipFile(tmp_path / "pkg.zip").namelist())
    assert "mvboost/a.py" in names
    assert not [n for n in names if n.startswith((".venv", "outputs", ".cache")) or n.endswith(".tar")], names


def test_dry_run_with_a_file_bank_and_an_interrupted_publication_writes_nothing(tmp_path):
    """--dry-run loads no MiniLM and writes no verdict cache for a file bank, and reports (but does not
    finish) a publication a killed run left between manifest and rename."""
    import json
    import os
    from pathlib import Path

    from mvboost.io.shards import OutputStore

    out, cache = tmp_path / "out", tmp_path / "cache"
    bank = tmp_path / "bank.jsonl"
    bank.write_text("".join(json.dumps({"prompt_id": f"b{i}",
                                        "prompt": f"a small {c} ceramic teapot with a lid"}) + "\n"
                            for i, c in enumerate(("red", "blue", "green", "white"))))
    sets = ["--set", "job.stages=[synthetic, write]", "--set", "prompts.source=file", "--set", f"prompts.bank={bank}",
            "--set", "prompts.near_duplicates=false"]
    run_in_process(load_job_config(SMOKE, [f"job.output={out}", "job.n=4", "job.progress=false", "synthetic.bytes=10",
                                           "job.stages=[synthetic, write]", "prompts.source=file",
                                           f"prompts.bank={bank}", "prompts.near_duplicates=false"]))
    store = OutputStore(str(out))
    committing = Path(store._committing_path(0))  # noqa: SLF001 - the state a kill leaves behind
    committing.parent.mkdir(parents=True)
    os.replace(out / "shard-000000.tar", committing)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    env = dict(os.environ, MVBOOST_CACHE=str(cache))
    cmd = [sys.executable, "-m", "ray_jobs.generate", "--config", str(SMOKE), "--output", str(out), "--n", "4",
           "--dry-run", *sets[:-2], "--set", "prompts.near_duplicates=true"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "near-duplicates: not checked for 4 bank rows" in r.stdout
    assert "1 committed shard(s) still under their temporary name" in r.stdout
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no cache, no publication
    assert not cache.exists()
    assert store.finished([0]) == ({0}, set()) and (out / "shard-000000.tar").exists()  # a run repairs it
