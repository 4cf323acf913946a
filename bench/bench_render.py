"""Renderer throughput: CPU rasterizer views/s forward and forward + backward, the backward's peak
memory, and gsplat on CUDA when present.

    python bench/bench_render.py [--quick]

Target: >= 20 views/s forward at 128^2 with 16k Gaussians on 2 cores, and a backward whose
memory does not grow with image size x Gaussians. On a GPU it also prints gsplat's speed-up over the
CPU rasterizer measured in the same run.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch

from mvboost.gaussians import Gaussians
from mvboost.geometry.cameras import era3d_cameras
from mvboost.render import render

TARGET_VIEWS_PER_S = 20.0  # forward, 128^2, 16k Gaussians, 2 CPU cores


def scene(n, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, n, 4, generator=g)
    return Gaussians(torch.rand(1, n, 3, generator=g) - 0.5, torch.rand(1, n, generator=g) * 0.9 + 0.05,
                     torch.rand(1, n, 3, generator=g) * 0.02 + 0.003, q / q.norm(dim=-1, keepdim=True),
                     torch.rand(1, n, 3, generator=g)).to(device)


def views_per_s(g, cams, backend, repeat=3, backward=False):
    """Best of ``repeat`` timed calls after a warm-up (gsplat JIT-compiles on first use)."""
    def once():
        if backward:
            params = [t.detach().requires_grad_(True) for t in (g.means, g.opacities, g.scales, g.quats, g.colors)]
            render(Gaussians(*params), cams, backend=backend).rgb.mean().backward()
        else:
            with torch.no_grad():
                render(g, cams, backend=backend)
    once()
    best = float("inf")
    for _ in range(repeat):
        if g.means.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        once()
        if g.means.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return len(cams) / best


def backward_peak_mib(size, n):
    """Peak RSS (MiB) of a fresh process before and after one forward + backward."""
    code = (f"import resource, torch, sys; sys.path.insert(0, 'bench'); torch.set_num_threads(2)\n"
            f"from bench_render import scene; from mvboost.geometry.cameras import era3d_cameras\n"
            f"from mvboost.gaussians import Gaussians; from mvboost.render import render\n"
            f"g = scene({n})\n"
            f"p = [t.requires_grad_(True) for t in (g.means, g.opacities, g.scales, g.quats, g.colors)]\n"
            f"b = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"render(Gaussians(*p), era3d_cameras({size})).rgb.mean().backward()\n"
            f"print(b / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    base, peak = map(float, out.stdout.split()[-2:])
    return base, peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cases = [(128, 16384)] if args.quick else [(128, 16384), (256, 16384), (256, 65536), (512, 65536)]
    for size, n in cases:
        g, cams = scene(n), era3d_cameras(size)
        fwd = views_per_s(g, cams, "torch")
        bwd = views_per_s(g, cams, "torch", repeat=1, backward=True)
        line = f"cpu  {size}² {n:>6} Gaussians: forward {fwd:7.2f} views/s, forward+backward {bwd:6.2f} views/s"
        if (size, n) == (128, 16384):
            met = "met" if fwd >= TARGET_VIEWS_PER_S else "NOT met"
            line += f" (target >= {TARGET_VIEWS_PER_S:.0f} forward: {met})"
        if torch.cuda.is_available():
            gpu = views_per_s(g.to("cuda"), cams.to("cuda"), "gsplat", repeat=20)
            line += f" | gsplat {gpu:9.1f} views/s = x{gpu / fwd:.0f} the CPU rasterizer"
        print(line, flush=True)
    for size in (128, 256):
        base, peak = backward_peak_mib(size, 16384)
        print(f"forward+backward, 6 views {size}² x 16k Gaussians: peak RSS {peak:.0f} MiB (before: {base:.0f} MiB)",
              flush=True)


if __name__ == "__main__":
    main()
