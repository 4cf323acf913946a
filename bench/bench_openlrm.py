"""OpenLRM timings with random weights: image -> triplanes, then volume rendering.

    python bench/bench_openlrm.py --preset tiny --size 56 --render 32                 # CPU, seconds
    python bench/bench_openlrm.py --preset base --device cuda --dtype bf16            # the GPU check's entry

Reports the planes' seconds per object (encoder + transformer + upsampler at ``--size``² input), rays/s of the
renderer (``--views`` views of ``--render``² at ``--samples`` samples per ray, ``--chunk`` rays per pass,
deterministic sampling) and objects/s for planes + those views. Figures land in ``--out`` (JSON) too.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(preset: str, device: str, dtype: str, size: int, render: int, views: int, samples: int, chunk: int,
        repeat: int) -> dict:
    from mvboost.models.openlrm import OpenLRM, OpenLRMConfig, render_camera, source_camera

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    torch.manual_seed(0)
    with torch.device(device):
        model = OpenLRM(OpenLRMConfig.preset(preset)).to(dt).eval()
    image = torch.rand(1, 3, size, size, device=device, dtype=dt)
    cam = source_camera().to(device, dt)
    angles = torch.linspace(0, 2 * torch.pi, views + 1)[:-1]
    c2w = torch.zeros(views, 4, 4)
    for i, a in enumerate(angles):  # an orbit at distance 2 around the Z-up world's origin, looking at it
        pos = torch.tensor([2 * torch.sin(a), -2 * torch.cos(a), 0.0])
        z = pos / pos.norm()
        x = torch.linalg.cross(torch.tensor([0.0, 0, 1]), z)
        c2w[i, :3, 0], c2w[i, :3, 1], c2w[i, :3, 2] = x, torch.linalg.cross(z, x), z
        c2w[i, :3, 3], c2w[i, 3, 3] = pos, 1

    cams = render_camera(c2w)[None].to(device, dt)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        planes = model.forward_planes(image, cam)
        model.render(planes, cams[:, :1], 8, samples_per_ray=samples, chunk=chunk)  # warm-up
        sync()
        t = time.perf_counter()
        for _ in range(repeat):
            planes = model.forward_planes(image, cam)
        sync()
        t_planes = (time.perf_counter() - t) / repeat
        t = time.perf_counter()
        for _ in range(repeat):
            model.render(planes, cams, render, samples_per_ray=samples, chunk=chunk)
        sync()
        t_render = (time.perf_counter() - t) / repeat
    rays = views * render * render
    out = {"preset": preset, "device": device, "dtype": dtype, "input": size, "render": render, "views": views,
           "samples_per_ray": samples, "chunk": chunk, "parameters": sum(p.numel() for p in model.parameters()),
           "planes_s": round(t_planes, 4), "render_s": round(t_render, 4), "rays_per_s": round(rays / t_render, 1),
           "objects_per_s": round(1 / (t_planes + t_render), 4)}
    if device == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/bench_openlrm.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="base", choices=["tiny", "small", "base", "large"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--size", type=int, default=336, help="input side (a multiple of 14)")
    p.add_argument("--render", type=int, default=128, help="rendered side")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--samples", type=int, default=96, help="samples per ray (half coarse, half importance)")
    p.add_argument("--chunk", type=int, default=65536, help="rays per rendering pass")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", help="write the figures as JSON here")
    a = p.parse_args(argv)
    res = run(a.preset, a.device, a.dtype, a.size, a.render, a.views, a.samples, a.chunk, a.repeat)
    print(json.dumps(res))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
