"""Seconds per object of the GSO evaluation on this machine: ground truth (21 TinyRenderer views +
surface samples), prediction (single mode: Era3D + LGM, tiny models), and scoring (renders, 2D metrics,
mesh from Gaussians, alignment, 3D metrics), at the protocol's defaults or --quick settings.

    python bench/bench_eval.py [--quick] [--object duck]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="128^2, mesh 96^3, alex only")
    ap.add_argument("--object", default="duck")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from mvboost.eval import LPIPSSet, Protocol, evaluate_object, prepare_gt
    from mvboost.eval.config import EvalConfig
    from mvboost.eval.fixtures import build_fixtures
    from mvboost.eval.gso import load_object
    from mvboost.eval.predict import EvalWorker

    proto = (Protocol(resolution=128, mesh_resolution=96, lpips_nets=["alex"]) if args.quick else Protocol())
    root = build_fixtures(Path(tempfile.mkdtemp()) / "gso")
    cfg = EvalConfig()
    cfg.job.models, cfg.job.device, cfg.job.output, cfg.protocol = ["base=tiny:lgm"], "cpu", tempfile.mkdtemp(), proto
    cfg.era3d.device = cfg.lgm.device = "cpu"
    worker = EvalWorker(cfg, str(root))
    obj = load_object(str(root), args.object)
    t = time.perf_counter()
    gt = prepare_gt(obj, proto, worker.renderer)
    t_gt = time.perf_counter() - t
    t = time.perf_counter()
    preds, _ = worker.predict(args.object, gt)
    t_pred = time.perf_counter() - t
    lp = LPIPSSet(proto.lpips_nets)
    t = time.perf_counter()
    rec = evaluate_object(preds["base"], obj, proto, gt=gt, lpips=lp)
    t_score = time.perf_counter() - t
    print(f"protocol: {proto.resolution}² x {len(proto.orbit())} views, mesh {proto.mesh_resolution}³, "
          f"LPIPS {proto.lpips_nets}, {proto.points} points; object {args.object}, "
          f"{rec['gaussians']} Gaussians (tiny LGM)")
    print(f"ground truth {t_gt:6.2f} s/object | prediction (Era3D + LGM, tiny) {t_pred:6.2f} s/object | "
          f"scoring {t_score:6.2f} s/object (canonical {rec['seconds']['canonical']:.2f}, "
          f"aligned {rec['seconds'].get('aligned', 0):.2f})")


if __name__ == "__main__":
    main()
