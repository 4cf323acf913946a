"""Renderer throughput: CPU reference rasterizer views/s (and gsplat on CUDA when present).

    python bench/bench_render.py [--quick]

Prints views/s per (resolution, Gaussians) and, on a GPU, gsplat's speed-up over the CPU rasterizer
measured in the same run.
"""
from __future__ import annotations

import argparse
import time

import torch

from mvboost.gaussians import Gaussians
from mvboost.geometry.cameras import era3d_cameras
from mvboost.render import render


def scene(n, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, n, 4, generator=g)
    return Gaussians(torch.rand(1, n, 3, generator=g) - 0.5, torch.rand(1, n, generator=g) * 0.9 + 0.05,
                     torch.rand(1, n, 3, generator=g) * 0.02 + 0.003, q / q.norm(dim=-1, keepdim=True),
                     torch.rand(1, n, 3, generator=g)).to(device)


def views_per_s(g, cams, backend, repeat=1):
    render(g, cams, backend=backend)  # warm-up (gsplat JIT-compiles on first use)
    if g.means.is_cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        render(g, cams, backend=backend)
    if g.means.is_cuda:
        torch.cuda.synchronize()
    return repeat * len(cams) / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    sizes = [128] if args.quick else [128, 256]
    counts = [16384] if args.quick else [16384, 65536]
    base = None
    for size in sizes:
        for n in counts:
            g, cams = scene(n), era3d_cameras(size)
            cpu = views_per_s(g, cams, "torch")
            base = base or cpu
            line = f"cpu  {size}² {n:>6} Gaussians: {cpu:8.2f} views/s  (x{cpu / base:.2f} of the first case)"
            if torch.cuda.is_available():
                gpu = views_per_s(g.to("cuda"), cams.to("cuda"), "gsplat", repeat=20)
                line += f" | gsplat {gpu:9.1f} views/s = x{gpu / cpu:.0f} the CPU rasterizer"
            print(line, flush=True)


if __name__ == "__main__":
    main()
