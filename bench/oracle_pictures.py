"""Pictures of the exports a person can look at, without model weights: the asset-library oracle (Gaussians
on a real mesh's surface with its texture's colours, ``mvboost.assets.gso.surface_gaussians``) written
through the same exports as ``mvboost-infer`` — the six Era3D views, a turntable, ``gaussians.ply`` (both
frames) and ``mesh.glb``.

    python bench/oracle_pictures.py --out docs/images [--object duck] [--size 128]

Writes ``oracle_views.png`` (front, front-right, right, back, left, front-left), ``oracle_turntable.png``
(8 frames of the turntable side by side), ``oracle_turntable.gif``, and, with ``--files``, the PLY/GLB files.
The objects are the evaluation fixtures (``pybullet_data`` meshes in the GSO layout).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--object", default="duck")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--points", type=int, default=30000)
    ap.add_argument("--files", action="store_true", help="also write gaussians.ply (both frames) and mesh.glb")
    a = ap.parse_args(argv)
    from PIL import Image

    from mvboost.assets.gso import load_object, surface_gaussians
    from mvboost.eval.fixtures import fixtures_root
    from mvboost.geometry.cameras import era3d_cameras
    from mvboost.io import export
    from mvboost.io.codec import tile_views, to_uint8
    from mvboost.render import render

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    obj = load_object(str(fixtures_root()), a.object)
    g = surface_gaussians(obj, n=a.points, seed=0, scale=0.006)
    with torch.no_grad():
        views = render(g, era3d_cameras(a.size), background=(1.0, 1.0, 1.0)).rgb[0]
    Image.fromarray(tile_views(to_uint8(views.permute(0, 2, 3, 1).numpy()))).save(out / "oracle_views.png")
    frames = export.turntable_frames(g, frames=24, size=a.size, elevation=-15.0)
    Image.fromarray(np.concatenate(list(frames[::3]), axis=1)).save(out / "oracle_turntable.png")
    export.write_turntable(frames, out / "oracle_turntable.gif", fps=12)
    written = ["oracle_views.png", "oracle_turntable.png", "oracle_turntable.gif"]
    if a.files:
        export.write_ply(g, out / "gaussians.ply")
        export.write_ply(g, out / "gaussians_viewer.ply", frame="viewer", sh_degree=3)
        export.write_glb(g, out / "mesh.glb", resolution=96)
        written += ["gaussians.ply", "gaussians_viewer.ply", "mesh.glb"]
    print(f"{a.object}: {', '.join(written)} in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
