"""The cost plan (python -m ray_jobs.cost_plan) from a measured profile, and the GPU benchmark that writes it."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, call_main
from mvboost.pipeline.job import load_job_config
from ray_jobs.cost_plan import cost_plan

PROD = REPO / "ray_jobs" / "configs" / "generate.yaml"


def profile(e2e=True, rejected=0):
    p = {"device": "NVIDIA H100 80GB HBM3",
         "stages": {"text_to_image": {"s_per_object": 0.2, "objects": 10, "rejected": 0},
                    "matting": {"s_per_object": 0.01, "objects": 10, "rejected": rejected},
                    "era3d": {"s_per_object": 4.0, "objects": 10, "rejected": 0},
                    "lgm": {"s_per_object": 0.01, "objects": 10, "rejected": 0},
                    "render": {"s_per_object": 0.02, "objects": 10, "rejected": 0},
                    "refine": {"s_per_object": 3.8, "objects": 10, "rejected": 0}},
         "settings": {"era3d": {"steps": 40, "batch_size": 2}, "refine": {"steps": 40, "batch_size": 2}},
         "models": {"text_to_image": "stabilityai/sdxl-turbo", "era3d": "pengHTYX/MacLab-Era3D-512-6view",
                    "lgm": "ashawkey/LGM", "refine": "pengHTYX/MacLab-Era3D-512-6view"}}
    if e2e:
        p["end_to_end"] = {"n": 48, "accepted": 48, "objects_per_gpu_hour": 700.0, "steady_objects_per_gpu_hour": 900.0}
    return p


def test_plan_from_an_end_to_end_profile():
    plan = cost_plan(load_job_config(PROD), 100_000, profile(), gpu_hour_usd=2.5, gpus=8)
    # GPU-s per object: fused group members x 0.75 GPU, text-to-image x 0.25 GPU
    assert plan.gpu_seconds_per_object_stages == pytest.approx(
        {"text_to_image": 0.05, "era3d": 3.0, "lgm": 0.0075, "render": 0.015, "refine": 2.85})
    assert plan.gpu_hours_bottom_up == pytest.approx(100_000 * 5.9225 / 3600)
    assert plan.gpu_hours == pytest.approx(100_000 / 900)  # the measured steady rate wins
    assert plan.usd == pytest.approx(100_000 / 900 * 2.5) and plan.wall_hours == pytest.approx(100_000 / 900 / 8)
    assert plan.requested == 100_000 and plan.warnings == []
    text = plan.format()
    assert "111.1 GPU-hours = 13.9 h on 8 GPU(s) = $277.78" in text and "end-to-end Ray job, steady" in text


def test_plan_from_stages_pays_for_rejections_and_warns_on_other_settings():
    cfg = load_job_config(PROD, ["era3d.steps=20"])
    plan = cost_plan(cfg, 9_000, profile(e2e=False, rejected=1))  # 1 of 10 objects rejected
    assert plan.accepted_fraction == pytest.approx(0.9) and plan.requested == 10_000
    assert plan.gpu_hours == pytest.approx(10_000 * 5.9225 / 3600) and plan.usd is None
    assert plan.objects_per_gpu_hour == pytest.approx(3600 * 0.9 / 5.9225)
    assert any("era3d.steps is 20 here but 40 in the profile" in w for w in plan.warnings)


def test_plan_warns_when_the_profile_measured_other_models():
    """A profile of the random sd-turbo (what the GPU check measures) priced against the sdxl-turbo config is
    said so, and so is a profile that does not record its models."""
    p = profile()
    p["models"] = {"text_to_image": "random:sd-turbo", "era3d": "random:era3d", "lgm": "random:lgm",
                   "refine": "random:era3d"}
    plan = cost_plan(load_job_config(PROD), 1000, p)
    assert any("text_to_image was profiled with random:sd-turbo but this config uses stabilityai/sdxl-turbo" in w
               for w in plan.warnings)
    assert sum("was profiled with" in w for w in plan.warnings) == 4
    del p["models"]
    assert any("does not say which models it measured" in w for w in cost_plan(load_job_config(PROD), 1000, p).warnings)


def test_plan_cli_errors_are_one_line(tmp_path):
    cmd = ["ray_jobs.cost_plan", "--config", PROD, "--n", "100000"]
    r = call_main(*cmd, "--profile", tmp_path / "none.json")
    assert r.returncode == 2 and r.stderr.startswith("error: cannot read the profile") and "Traceback" not in r.stderr
    good = tmp_path / "p.json"
    good.write_text(json.dumps(profile()))
    r = call_main(*cmd, "--profile", good, "--gpu-hour-usd", "3")
    assert r.returncode == 0, r.stderr
    assert "plan for 100,000 accepted objects" in r.stdout and "$333.33" in r.stdout


def test_gpu_benchmark_runs_on_tiny_models_and_its_profile_plans(tmp_path, tiny_cache):
    """bench/bench_gpu.py is the command run on the H100: the same code on tiny models on the CPU."""
    out = tmp_path / "profile.json"
    cmd = [sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--tiny", "--device", "cpu", "--skip-e2e",
           "--objects", "2", "--unet-objects", "1", "--peak-tflops", "1.0", "--out", str(out)]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    prof = json.loads(out.read_text())
    assert set(prof["stages"]) == {"text_to_image", "matting", "era3d", "lgm", "render", "refine"}
    for s in ("text_to_image", "era3d", "lgm", "refine"):
        assert prof["stages"][s]["gflop_per_object"] > 0 and prof["stages"][s]["pct_peak"] > 0
    # FLOPs: generation counts 4 UNet steps, refinement int(4 x 0.95) = 3 steps plus the render encoding
    unet = prof["era3d_unet"][0]
    assert unet["objects_per_call"] == 1 and unet["images_per_call"] == 24 and unet["gflop_per_call"] > 0
    assert prof["stages"]["era3d"]["gflop_per_object"] > 4 * unet["gflop_per_call"]
    r = call_main("ray_jobs.cost_plan", "--config", REPO / "ray_jobs" / "configs" / "generate_1gpu_smoke.yaml",
                  "--n", "1000", "--profile", out)
    assert r.returncode == 0 and "sum of stages" in r.stdout, r.stderr
