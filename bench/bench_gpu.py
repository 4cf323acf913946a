"""The production chain's speed on one GPU, per stage and end to end, and a measured profile for plans.

    python bench/bench_gpu.py [--config ray_jobs/configs/generate_gpu_random.yaml] [--out profile.json]
                              [--objects 8] [--e2e-n 48] [--skip-e2e | --e2e-only] [--peak-tflops T]

Uses the real stage classes with the config's models (by default the full-size random checkpoints,
``random:*``, built once on the GPU into ``$MVBOOST_CACHE``), so the timed code is the production
code. Per stage: seconds per object at the stage's batch size after a warm-up batch, objects per
GPU-hour of the GPU share the stage holds, and for the model stages FLOPs counted with
``torch.utils.flop_counter.FlopCounterMode`` (one uncompiled call; the diffusion loops as
fixed + steps x per-step, from runs at 1 and 2 steps), achieved TFLOP/s and % of peak. Also the Era3D
UNet alone (the target: >= 50 % of bf16 peak) eager and compiled. End to end: the real Ray job
(``python -m ray_jobs.generate``) on ``--e2e-n`` objects on this machine's GPUs; objects per GPU-hour
over the whole run and after the first committed shard (start-up, model loading and compilation
excluded). Writes the profile JSON that ``python -m ray_jobs.cost_plan`` reads, after every figure (a call
stopped by its time limit keeps what it measured); ``--e2e-only`` adds the end-to-end run to it later.

Peak: measured here as the rate of a large matmul in the run's dtype (the way the figures in
docs/gpu.md were made: 790 TFLOP/s bf16 on an H100), unless ``--peak-tflops`` is given.
``--tiny --device cpu`` runs the same code on the tiny models (a check that the script works).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_tflops(device, dtype) -> float:
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


class eager:
    """Run a module compiled in place (``module.compile()``) eagerly inside the block: FLOPs are counted
    on the dispatched ops, which compiled kernels bypass."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.saved = getattr(self.module, "_compiled_call_impl", None)
        self.module._compiled_call_impl = None
        return self.module

    def __exit__(self, *exc):
        self.module._compiled_call_impl = self.saved


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def timed(fn, device, repeat: int, warmup=None) -> float:
    (warmup or fn)()  # warm-up (and compilation): ``warmup`` (one batch) when given, else one call of fn
    sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t) / repeat


def stage_rows(cfg, n):
    from mvboost.pipeline.job import item_seed
    from mvboost.prompts.offline import offline_prompts

    return [{"item_id": f"p{i}", "prompt": p["prompt"], "seed": item_seed(0, p["prompt_id"]), "shard": 0, "index": i}
            for i, p in enumerate(offline_prompts(n, 0))]


def to_batch(rows):
    return {k: [r[k] for r in rows] for k in rows[0]}


def to_rows(batch):
    n = len(batch["item_id"])
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def bench_stages(cfg, device, objects: int, repeat: int, peak: float, on_record=None) -> tuple[dict, dict]:
    """Each stage of the chain on ``objects`` objects (its own batch size), in chain order."""
    from mvboost.pipeline.units import build_units, gpu_shares
    from mvboost.stages.base import OK, STATUS

    units = build_units(cfg)
    share = gpu_shares(units)
    rows = stage_rows(cfg, objects)
    out, stages = {}, {}
    for st in (s for u in units for s in u.members if s.name != "write"):
        name = st.name
        st.preflight()
        t0 = time.perf_counter()
        st.ensure_setup()
        load_s = time.perf_counter() - t0
        bs = st.resources.batch_size
        batches = [rows[i:i + bs] for i in range(0, len(rows), bs)]
        results = []

        def run_all():
            results.clear()
            for b in batches:
                results.extend(to_rows(st(to_batch(b))))

        per_object = timed(run_all, device, repeat, warmup=lambda: st(to_batch(batches[0]))) / len(rows)
        rejected = sum(r[STATUS] != OK for r in results)
        g = share.get(name, 0.0)
        rec = {"s_per_object": round(per_object, 5), "objects": len(rows), "batch_size": bs, "gpu_share": g,
               "load_s": round(load_s, 2),
               "rejected": rejected}
        if g > 0:
            rec["objects_per_gpu_hour"] = round(3600 / (per_object * g), 1)
        out[name] = rec
        stages[name] = st
        if on_record is not None:
            on_record(name, rec)  # written now: a later timeout keeps this figure
        rows = [r for r in results if r[STATUS] == OK] or results
        print(f"{name:>14}: {per_object:8.4f} s/object (batch {bs}, load {load_s:.1f} s, rejected {rejected})",
              flush=True)
    flops = count_stage_flops(cfg, stages, rows_for_flops(stages, cfg, objects), device)
    for name, f in flops.items():
        rec = out[name]
        tflops = f / rec["s_per_object"] / 1e12
        # significant digits, not decimals: tiny models on a CPU run at 1e-4 TFLOP/s and must not round to 0
        rec["gflop_per_object"] = float(f"{f / 1e9:.4g}")
        rec["tflops"] = float(f"{tflops:.4g}")
        rec["pct_peak"] = float(f"{100 * tflops / peak:.4g}")
        print(f"{name:>14}: {rec['gflop_per_object']:.1f} GFLOP/object, {rec['tflops']:.1f} TFLOP/s = "
              f"{rec['pct_peak']:.1f} % of {peak:.1f}", flush=True)
        if on_record is not None:
            on_record(name, rec)
    return out, stages


def rows_for_flops(stages, cfg, objects):
    """One object's row carried through the chain (inputs for the FLOP counts)."""
    from mvboost.stages.base import OK, STATUS

    batch = to_batch(stage_rows(cfg, 1))
    rows = {}
    for name, st in stages.items():
        rows[name] = to_rows(batch)
        batch = st(batch)
        if batch[STATUS][0] != OK:
            break
    return rows


def count_stage_flops(cfg, stages, rows, device) -> dict[str, float]:
    """FLOPs per object of the model stages, on uncompiled models (compilation does not change them)."""
    import numpy as np

    from mvboost.io.codec import decode_array

    flops = {}
    if "text_to_image" in stages and "text_to_image" in rows:
        st = stages["text_to_image"]
        den = getattr(st.pipe, "unet", None) or getattr(st.pipe, "transformer", None)
        # a compiled stage pads the row to its batch size (one compiled shape): count that batch, per object
        n = st.resources.batch_size if st.compiled else len(rows["text_to_image"])
        with eager(den):
            flops["text_to_image"] = count_flops(lambda: st.process(rows["text_to_image"])) / n
    for name in ("era3d", "refine"):
        if name not in stages or name not in rows:
            continue
        st = stages[name]
        pipe = st.pipe  # the loaded pipeline, run eagerly for the count (no second 3.9 GB load)
        row = rows[name][0]
        rgba = [decode_array(row["rgba"])]
        with eager(pipe.unet):
            if name == "era3d":
                f1 = count_flops(lambda: pipe.generate(rgba, [1], steps=1, guidance=st.config.guidance))
                f2 = count_flops(lambda: pipe.generate(rgba, [1], steps=2, guidance=st.config.guidance))
                k = st.config.steps
            else:
                col = decode_array(row["renders"])[None].astype(np.float32) / 255
                nor = decode_array(row["render_normals"])[None].astype(np.float32) / 255
                f1 = count_flops(lambda: pipe.refine(col, nor, rgba, 0.5, [1], steps=2, guidance=st.config.guidance))
                f2 = count_flops(lambda: pipe.refine(col, nor, rgba, 0.5, [1], steps=4, guidance=st.config.guidance))
                ts = pipe.scheduler.set_timesteps(st.config.steps) or pipe.scheduler.timesteps
                k = len(pipe.refine_timesteps(ts, st.config.strength))
        per_step = f2 - f1
        flops[name] = (f1 - per_step) + k * per_step
    if "lgm" in stages and "lgm" in rows:
        flops["lgm"] = count_flops(lambda: stages["lgm"].process(rows["lgm"]))
    return flops


def bench_unet(stage, device, objects_per_call: int, peak: float, compiled: bool, repeat: int) -> dict:
    """The Era3D UNet alone at one CFG call: objects x 2 guidance x 2 domains x 6 views images."""
    pipe = stage.pipe
    unet = pipe.unet
    cfgu = unet.config
    b = objects_per_call * 24
    side = pipe.latent_shape[-1]
    dt = pipe.dtype
    x = torch.randn(b, cfgu["in_channels"], side, side, device=device, dtype=dt)
    ehs = torch.randn(b, 77, cfgu["cross_attention_dim"], device=device, dtype=dt)
    cl = torch.randn(b, cfgu["projection_class_embeddings_input_dim"], device=device, dtype=dt)
    t = torch.tensor(500, device=device)
    with torch.no_grad():
        with eager(unet):
            f = count_flops(lambda: unet(x, t, ehs, cl))
        if compiled and getattr(unet, "_compiled_call_impl", None) is None:
            unet.compile()
        ctx = eager(unet) if not compiled else _Null()
        with ctx:
            t0 = time.perf_counter()
            unet(x, t, ehs, cl)  # compilation (if on) + warm-up
            sync(device)
            compile_s = time.perf_counter() - t0
            s = timed(lambda: unet(x, t, ehs, cl), device, repeat)
    tflops = f / s / 1e12
    rec = {"objects_per_call": objects_per_call, "images_per_call": b, "compiled": compiled,
           "s_per_call": round(s, 4), "gflop_per_call": float(f"{f / 1e9:.4g}"), "tflops": float(f"{tflops:.4g}"),
           "pct_peak": float(f"{100 * tflops / peak:.4g}"), "first_call_s": round(compile_s, 1)}
    print(f"  Era3D UNet {'compiled' if compiled else 'eager   '} x{objects_per_call} objects: {s:.4f} s/step, "
          f"{tflops:.1f} TFLOP/s = {rec['pct_peak']:.1f} % of peak (first call {compile_s:.1f} s)", flush=True)
    return rec


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def bench_end_to_end(config: Path, n: int, out_dir: Path, gpus: float, extra: list[str]) -> dict:
    """The real Ray job on this machine; shard commits are watched to separate start-up from steady work."""
    out = out_dir / f"e2e-{int(time.time())}"
    shard = max(1, n // 8)
    cmd = [sys.executable, "-m", "ray_jobs.generate", "--config", str(config), "--output", str(out), "--n", str(n),
           "--set", f"job.shard_size={shard}", "--set", "job.progress=false", *extra]
    seen: dict[str, float] = {}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for p in out.glob("shard-*.json"):
                seen.setdefault(p.name, time.time())
            time.sleep(0.25)

    th = threading.Thread(target=watch, daemon=True)
    t0 = time.time()
    th.start()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - t0
    stop.set()
    th.join()
    if r.returncode != 0:
        print(r.stdout[-2000:], r.stderr[-4000:], flush=True)
        return {"n": n,
                "error": f"the Ray job failed (rc {r.returncode}): {(r.stderr.strip().splitlines() or [''])[-1][:300]}",
                "wall_s": round(wall, 1)}
    summary = json.loads((out / "summary.json").read_text())
    times = sorted(seen.values())
    rec = {"n": n, "accepted": summary["accepted"], "rejected": summary["rejected"], "gpus": gpus,
           "wall_s": round(wall, 1), "objects_per_gpu_hour": round(summary["accepted"] / (wall * gpus / 3600), 1),
           "time_to_first_shard_s": round(times[0] - t0, 1) if times else None,
           "busy_gpu_seconds": summary["gpu_seconds_busy"], "held_gpu_seconds": summary["gpu_seconds_held"],
           "shards": len(times)}
    if len(times) >= 3:  # steady: the shards after the first, over the time after the first
        per_shard = summary["accepted"] / len(times)
        gpu_hours = (times[-1] - times[0]) * gpus / 3600
        rec["steady_objects_per_gpu_hour"] = round(per_shard * (len(times) - 1) / gpu_hours, 1)
    print(f"end to end: {rec}", flush=True)
    return rec


class Profile:
    """The profile JSON, rewritten (atomically) after every figure: a call killed by its time limit still
    leaves everything measured before."""

    def __init__(self, path: Path, base: dict | None = None):
        self.path, self.data = Path(path), dict(base or {})

    def set(self, *keys_and_value) -> None:
        *keys, value = keys_and_value
        node = self.data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "ray_jobs" / "configs" / "generate_gpu_random.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default="bench_gpu_profile.json")
    ap.add_argument("--objects", type=int, default=8, help="objects per stage measurement")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--unet-objects", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--e2e-n", type=int, default=48)
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--e2e-only", action="store_true",
                    help="only the end-to-end run, added to an existing --out profile (a second GPU-check step)")
    ap.add_argument("--skip-compile", action="store_true", help="UNet eager only (compilation takes ~75 s)")
    ap.add_argument("--peak-tflops", type=float, default=0.0)
    ap.add_argument("--tiny", action="store_true", help="tiny models (checks the script, e.g. on a CPU)")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mvboost.pipeline.job import load_job_config
    from mvboost.stages.common import pick_device, pick_dtype

    overrides = list(a.overrides)
    if a.tiny:
        overrides += ["text_to_image.model=tiny:sd", "text_to_image.size=64", "text_to_image.steps=2",
                      "era3d.model=tiny:era3d", "refine.model=tiny:era3d", "lgm.model=tiny:lgm", "render.size=64",
                      "matting.size=64", "era3d.steps=4", "refine.steps=4"]
    if a.device != "auto":
        overrides += [f"{s}.device={a.device}" for s in ("text_to_image", "era3d", "refine", "lgm", "render")]
    cfg = load_job_config(a.config, overrides)
    device = pick_device(a.device)
    if a.e2e_only:
        old = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else {}
        prof = Profile(a.out, old)
        gpus = torch.cuda.device_count() if device.type == "cuda" else 1
        prof.set("end_to_end", bench_end_to_end(Path(a.config), a.e2e_n, Path(os.environ.get("TMPDIR", "/tmp")), gpus,
                                                [f"--set={o}" for o in overrides]))
        print(f"profile written to {a.out}")
        return 0 if "error" not in prof.data["end_to_end"] else 1
    dtype = pick_dtype(cfg.era3d.dtype, device)
    peak = a.peak_tflops or matmul_peak_tflops(device, dtype)
    gpu_name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {gpu_name}, dtype {dtype}, peak {peak:.1f} TFLOP/s "
          f"({'given' if a.peak_tflops else 'measured matmul'}), torch {torch.__version__}", flush=True)
    prof = Profile(a.out, {"device": gpu_name, "device_type": device.type, "torch": torch.__version__,
                           "dtype": str(dtype), "peak_tflops": round(peak, 1),
                           "peak_source": "given" if a.peak_tflops else "measured matmul", "config": str(a.config),
                           "overrides": overrides,
                           "models": {s: getattr(cfg, s).model for s in ("text_to_image", "era3d", "lgm", "refine")}})
    t0 = time.perf_counter()
    from mvboost.models.hub import resolve

    for s in ("text_to_image", "era3d", "lgm"):  # build random:/tiny: models before any timing
        resolve(getattr(cfg, s).model, getattr(cfg, s).revision, what=s)
    print(f"models ready in {time.perf_counter() - t0:.1f} s", flush=True)
    prof.set("models_ready_s", round(time.perf_counter() - t0, 1))
    stages, built = bench_stages(cfg, device, a.objects, a.repeat, peak,
                                 on_record=lambda n, r: prof.set("stages", n, r))
    prof.set("settings", {s: {"steps": getattr(getattr(cfg, s), "steps", None),
                              "batch_size": getattr(cfg, s).resources.batch_size} for s in stages})
    unet = []
    runs = [(k, False) for k in a.unet_objects]
    if device.type == "cuda" and not a.skip_compile:
        runs += [(k, True) for k in a.unet_objects]
    for k, compiled in runs:
        unet.append(bench_unet(built["era3d"], device, k, peak, compiled=compiled, repeat=max(3, a.repeat)))
        prof.set("era3d_unet", unet)
    del built
    if not a.skip_e2e:
        gpus = torch.cuda.device_count() if device.type == "cuda" else 1
        prof.set("end_to_end", bench_end_to_end(Path(a.config), a.e2e_n, Path(os.environ.get("TMPDIR", "/tmp")),
                                                gpus, [f"--set={o}" for o in overrides]))
    print(f"profile written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
