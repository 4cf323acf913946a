"""Image -> 3D with OpenLRM (``python -m mvboost.infer … --model openlrm:<folder | id>``).

Per image: matting and recentring (as for LGM) -> composited on white, resized to ``source_size`` (bicubic, as
the official inference) -> triplanes from the canonical source camera -> ``mesh.glb`` (marching cubes of the
density at ``mesh_threshold``, the official 3.0, with vertex colours), a turntable and ``meta.json``. Outputs are
in our world frame (Y up, the input view on +Z), through :class:`mvboost.models.recon.TriplaneReconstruction`.
Weights of the official checkpoints are CC-BY-NC 4.0 (non-commercial).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import to_dict
from ..io.export import mesh_glb
from ..stages.common import pick_device, pick_dtype
from ..stages.matting import MattingStage


@dataclass
class InferOpenLRMConfig:
    # a folder (config.json + model.safetensors), a Hub id, tiny:openlrm, random:openlrm; the official base by default
    model: str = "zxhezexin/openlrm-mix-base-1.1"
    revision: str = "main"
    dtype: str = "fp32"
    source_size: int = 0  # input resolution, a multiple of 14; 0: the checkpoint's (small 224, base 336, large 448)
    source_distance: float = 2.0
    samples_per_ray: int = 0  # 0: the model's
    chunk: int = 16384  # rays per rendering pass (bounds memory)
    mesh_threshold: float = 3.0


@torch.no_grad()
def openlrm_planes(model, rgba: list[np.ndarray], c: InferOpenLRMConfig) -> torch.Tensor:
    """Matted RGBA inputs -> triplanes (B, 3, C, H, W) float32, from the canonical source camera."""
    from ..models.openlrm import openlrm_input, source_camera

    p = next(model.parameters())
    from ..models.openlrm import source_size_for

    size = c.source_size or source_size_for(model.config)
    x = torch.cat([openlrm_input(a, size) for a in rgba]).to(p.device, p.dtype)
    cam = source_camera(c.source_distance, batch=len(rgba)).to(p.device, p.dtype)
    return model.forward_planes(x, cam).float()


class OpenLRMImageTo3D:
    """Loads matting and OpenLRM once; ``__call__(sources, output)`` writes one folder per image."""

    def __init__(self, cfg):
        from ..models.loading import load_model
        from .common import model_record

        self.cfg, c = cfg, cfg.openlrm
        if c.source_size % 14:
            raise ValueError(f"openlrm.source_size must be a multiple of 14, got {c.source_size}")
        if cfg.output.turntable not in ("gif", "mp4", "none"):
            raise ValueError(f"output.turntable must be gif, mp4 or none, got {cfg.output.turntable!r}")
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(c.dtype, self.device)
        self.matting = MattingStage(cfg.matting)
        self.matting.ensure_setup()
        self.model = load_model(f"openlrm:{c.model}", revision=c.revision, device=self.device, dtype=self.dtype)
        self.models = {"openlrm": model_record(c.model, c.revision, "openlrm")}

    def __call__(self, sources: list[str], output: str | Path, progress=None):
        from .common import Result, item_name, matte_input, write_summary

        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
        results = [Result(item_name(s, taken), s) for s in sources]
        for i, r in enumerate(results):
            rgba = matte_input(self.matting, r)
            if rgba is not None:
                t = time.perf_counter()
                planes = openlrm_planes(self.model, [rgba], self.cfg.openlrm)
                r.meta["seconds"]["openlrm"] = round(time.perf_counter() - t, 3)
                self._finish(r, output, rgba, planes, self.cfg.seed + i)
            if progress:
                progress.update(1)
        write_summary(output, results)
        return results

    def _finish(self, r, output: Path, rgba, planes, seed: int) -> None:
        from PIL import Image

        from ..io import export
        from ..io.codec import to_uint8
        from .recon import TriplaneReconstruction

        c, out = self.cfg.openlrm, self.cfg.output
        folder = output / r.name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgba, "RGBA").save(folder / "input_rgba.png")
        recon = TriplaneReconstruction(self.model, planes, c.samples_per_ray or None, c.chunk)
        files = ["input_rgba.png"]
        t = time.perf_counter()
        if out.mesh:
            try:
                (folder / "mesh.glb").write_bytes(mesh_glb(recon.mesh(out.mesh_resolution, c.mesh_threshold)))
                files.append("mesh.glb")
            except ValueError as e:  # no surface at the threshold: recorded, the other outputs stand
                r.meta["mesh_skipped"] = str(e)
        if out.turntable != "none":
            rgb, _ = recon.render(export.turntable_cameras(out.turntable_frames, out.turntable_size,
                                                           out.turntable_elevation))
            export.write_turntable(to_uint8(rgb), folder / f"turntable.{out.turntable}")
            files.append(f"turntable.{out.turntable}")
        r.meta["seconds"]["exports"] = round(time.perf_counter() - t, 3)
        r.meta.update(input=r.source, seed=seed, device=str(self.device), backend="openlrm", models=self.models,
                      files=files + ["meta.json"], triplanes=list(planes.shape[1:]), config=to_dict(self.cfg))
        (folder / "meta.json").write_text(json.dumps(r.meta, indent=2, default=str))
        r.folder = folder
