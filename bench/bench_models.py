"""Model timings on this machine: LGM forward (tiny, big) and the tiny Era3D pipeline per object.

    python bench/bench_models.py [--skip-big]

With a GPU, also LGM-big and the full-size Era3D UNet with random weights in fp16/bf16
(generation: 40 steps x CFG x 6 views x 2 domains) and achieved TFLOP/s.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from mvboost.models.lgm import LGM, LGMConfig


def lgm_forward_s(preset, device="cpu", dtype=torch.float32, batch=1, repeat=1):
    with torch.device(device):
        model = LGM(LGMConfig.preset(preset)).to(dtype).eval()
    x = model.prepare_inputs(torch.rand(batch, 4, 3, model.config.input_size, model.config.input_size,
                                        device=device)).to(dtype)
    with torch.no_grad():
        model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(repeat):
            model(x)
        if device == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat


def era3d_tiny_s_per_object(batch=2, steps=40):
    from mvboost.models.era3d_pipeline import Era3DPipeline
    from mvboost.models.hub import resolve as resolve_model

    pipe = Era3DPipeline(resolve_model("tiny:era3d"))
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[10:54, 20:44] = (200, 60, 40, 255)
    pipe.generate([rgba] * batch, seeds=list(range(batch)), steps=2)  # warm-up
    t = time.perf_counter()
    out = pipe.generate([rgba] * batch, seeds=list(range(batch)), steps=steps)
    gen = (time.perf_counter() - t) / batch
    t = time.perf_counter()
    pipe.refine(out.colors, out.normals, [rgba] * batch, strength=0.95, seeds=list(range(batch)), steps=steps)
    ref = (time.perf_counter() - t) / batch
    return gen, ref


def era3d_full_gpu(dtype=torch.float16, steps=40):
    """Full-size UNet (random weights), one object: generation 40 steps with CFG = 4 x 6 images/step."""
    from mvboost.models.fullsize import era3d_unet

    unet = era3d_unet(device="cuda").to(dtype).eval()
    x = torch.randn(24, 8, 64, 64, device="cuda", dtype=dtype)
    ehs = torch.randn(24, 77, 1024, device="cuda", dtype=dtype)
    cl = torch.randn(24, 2048, device="cuda", dtype=dtype)
    with torch.no_grad():
        for _ in range(2):
            unet(x, torch.tensor(500, device="cuda"), ehs, cl)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            unet(x, torch.tensor(500, device="cuda"), ehs, cl)
        torch.cuda.synchronize()
    s = time.perf_counter() - t
    flops = None
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            unet(x, torch.tensor(500, device="cuda"), ehs, cl)
        flops = fc.get_total_flops() * steps
    except Exception:  # noqa: BLE001
        pass
    return s, flops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-big", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    res = {}
    res["lgm_tiny_cpu_s"] = lgm_forward_s("tiny", repeat=3)
    print(f"LGM tiny forward, CPU fp32, batch 1: {res['lgm_tiny_cpu_s']:.3f} s", flush=True)
    if not args.skip_big:
        res["lgm_big_cpu_s"] = lgm_forward_s("big")
        print(f"LGM big forward, CPU fp32, batch 1: {res['lgm_big_cpu_s']:.1f} s "
              f"(= x{res['lgm_big_cpu_s'] / res['lgm_tiny_cpu_s']:.0f} tiny)", flush=True)
    gen, ref = era3d_tiny_s_per_object()
    res.update(era3d_tiny_generate_s_per_object=gen, era3d_tiny_refine_s_per_object=ref)
    print(f"Era3D tiny (64², CPU): generate 40 steps {gen:.2f} s/object, refine s=0.95 {ref:.2f} s/object "
          f"(refine/generate = {ref / gen:.2f}, expected ~38/40)", flush=True)
    if torch.cuda.is_available():
        for dt in (torch.float16, torch.bfloat16):
            s = lgm_forward_s("big", "cuda", dt, batch=4, repeat=10)
            print(f"LGM big forward, GPU {dt}, batch 4: {4 / s:.1f} objects/s", flush=True)
        s, flops = era3d_full_gpu()
        line = f"Era3D full UNet fp16, 40 steps x CFG (24 images/step): {s:.2f} s/object generation"
        if flops:
            line += f", {flops / s / 1e12:.0f} TFLOP/s achieved"
        print(line + f"; refinement s=0.95 ~ {s * 38 / 40:.2f} s/object", flush=True)
    print(json.dumps({k: round(v, 4) for k, v in res.items()}))


if __name__ == "__main__":
    main()
