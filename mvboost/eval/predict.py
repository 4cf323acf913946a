"""Prediction and scoring of one object at a time: the ground truth rendered once, every model's prediction in the
run's mode, the protocol's metrics, exports and the per-object record (written last). The same worker runs in
process and as a Ray actor (``ray_jobs/evaluate.py``)."""
from __future__ import annotations

import json
import logging
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..gaussians import Gaussians
from ..io.codec import encode_png, tile_views
from ..stages.base import Reject
from .config import EvalConfig, check_config, object_seed
from .output import EvalOutput

log = logging.getLogger(__name__)


def _read_rgb(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _strip(img: np.ndarray, every: int = 1, max_views: int = 7) -> np.ndarray:
    """(V,H,W,3) -> one row of up to ``max_views`` views, for the report."""
    return tile_views(img[::every][:max_views])


# ---- the worker -------------------------------------------------------------------------------------------
class EvalWorker:
    """Evaluates objects one at a time: GT once, every model's prediction, scores, exports, JSON last.
    The same class runs in-process and as a Ray actor (``ray_jobs/evaluate.py``)."""

    def __init__(self, cfg: EvalConfig, root: str):
        from ..assets.render import MeshRenderer
        from ..stages.common import pick_device, pick_dtype
        from .score import LPIPSSet

        self.cfg, self.root = cfg, root
        self.specs = check_config(cfg)
        self.out = EvalOutput(cfg.job.output)
        self.device = pick_device(cfg.job.device)
        self.renderer = MeshRenderer()
        self.lpips = LPIPSSet(cfg.protocol.lpips_nets, device=self.device)
        self.runner, self.lgms, self.openlrms = None, {}, {}
        if cfg.job.mode != "ply":
            from ..infer.run import ImageTo3D, InferConfig, load_reconstructor

            lgm_specs = [s for s in self.specs if s.backend == "lgm"]
            first = lgm_specs[0] if lgm_specs else None
            icfg = InferConfig(device=cfg.job.device, matting=cfg.matting, era3d=cfg.era3d,
                               lgm=replace(cfg.lgm, model=first.source, revision=first.revision) if first else cfg.lgm,
                               lora=first.lora if first else "")
            if cfg.job.mode in ("single", "thumbnail") and first is not None:
                self.runner = ImageTo3D(icfg)
                self.lgms[first.name] = self.runner.lgm
            for s in lgm_specs:
                if s.name not in self.lgms:
                    c = replace(icfg, lgm=replace(cfg.lgm, model=s.source, revision=s.revision), lora=s.lora)
                    self.lgms[s.name] = load_reconstructor(c, self.device, pick_dtype(cfg.lgm.dtype, self.device))
            for s in self.specs:
                if s.backend == "openlrm":  # with a training run's adapter merged (as train.merge writes it)
                    from ..models.loading import load_model

                    self.openlrms[s.name] = load_model(f"openlrm:{s.source}", revision=s.revision, adapter=s.lora,
                                                       device=self.device)
        if self.runner is not None:
            self.matting = self.runner.matting
        elif self.openlrms:
            from ..stages.matting import MattingStage

            self.matting = MattingStage(cfg.matting)
            self.matting.ensure_setup()
        else:
            self.matting = None

    def predict(self, name: str, gt) -> tuple[dict, dict]:
        """{model: Gaussians | Reconstruction | reason str}, extras (Era3D views for the report)."""
        from ..geometry.cameras import ERA3D_TO_LGM_VIEWS, era3d_cameras, lgm_input_cameras
        from ..infer.run import gaussians_from_views

        mode, preds, extras = self.cfg.job.mode, {}, {}
        if mode == "ply":
            for s in self.specs:
                p = Path(s.source) / f"{name}.ply"
                preds[s.name] = Gaussians.from_ply(p) if p.is_file() else f"missing {p}"
            return preds, extras
        if mode in ("single", "thumbnail"):
            if mode == "thumbnail" and gt.obj.thumbnail is None:
                return {s.name: "no thumbnails/0.jpg in the object's folder" for s in self.specs}, extras
            image = gt.input_rgba if mode == "single" else _read_rgb(gt.obj.thumbnail)
            try:
                rgba = self.matting.matte(image)
            except Reject as e:
                return {s.name: f"matting: {e}" for s in self.specs}, extras
            extras["input"] = rgba
            for s in self.specs:
                if s.backend == "openlrm":
                    preds[s.name] = self._openlrm(s.name, rgba)
            if self.runner is None:
                return preds, extras
            mv = self.runner.multiview([rgba], [object_seed(self.cfg.job.seed, name)])
            views = mv.colors[:, list(ERA3D_TO_LGM_VIEWS)]
            extras["era3d"] = mv.colors[0]
        elif mode == "gt4":  # the GT rendered at LGM's own input cameras
            rgb, _ = self.renderer.render(gt.obj, lgm_input_cameras(self.cfg.protocol.input_size), 1)
            views = rgb[None]
            extras["gt_inputs"] = rgb
        else:  # gt_ortho: the GT at Era3D's orthographic cameras, LGM's four of them (as the shards have them)
            rgb, _ = self.renderer.render(gt.obj, era3d_cameras(self.cfg.protocol.input_size),
                                          self.cfg.protocol.supersample)
            views = rgb[None, list(ERA3D_TO_LGM_VIEWS)]
            extras["gt_inputs"] = rgb
        for s in self.specs:
            if s.backend != "lgm":
                continue
            g = gaussians_from_views(self.lgms[s.name], views, self.device)
            preds[s.name] = g.to("cpu") if bool(g.isfinite().all()) else "NaN in the prediction"
        return preds, extras

    def _openlrm(self, name: str, rgba: np.ndarray):
        """OpenLRM on the matted input from its canonical source camera -> a reconstruction in our frame."""
        from ..infer.openlrm import openlrm_planes
        from ..infer.recon import TriplaneReconstruction

        model = self.openlrms[name]
        planes = openlrm_planes(model, [rgba], self.cfg.openlrm)
        if not bool(planes.isfinite().all()):
            return "NaN in the prediction"
        return TriplaneReconstruction(model, planes, self.cfg.openlrm.samples_per_ray or None, self.cfg.openlrm.chunk,
                                      self.cfg.openlrm.mesh_threshold)

    def evaluate(self, name: str) -> dict:
        from ..assets.gso import load_object
        from ..io import export
        from .score import evaluate_object, prepare_gt

        t0 = time.perf_counter()
        obj = load_object(self.root, name)
        gt = prepare_gt(obj, self.cfg.protocol, self.renderer)
        rec = {"object": name, "status": "done", "mode": self.cfg.job.mode, "noise_floor_cd": gt.noise_floor_cd,
               "gt_seconds": round(gt.seconds, 3), "models": {}}
        self.out.write(f"objects/{name}/gt_input.png", encode_png(gt.input_rgba))
        self.out.write(f"objects/{name}/gt_views.png", encode_png(_strip(gt.rgb, 3)))
        t = time.perf_counter()
        preds, extras = self.predict(name, gt)
        rec["predict_seconds"] = round(time.perf_counter() - t, 3)
        if "era3d" in extras:
            self.out.write(f"objects/{name}/era3d_views.png", encode_png(_strip(extras["era3d"], 1, 6)))
        if self.cfg.job.mode == "thumbnail" and "input" in extras:
            self.out.write(f"objects/{name}/thumbnail_input.png", encode_png(extras["input"]))
        for model, g in preds.items():
            if isinstance(g, str):
                rec["models"][model] = {"status": "failed", "reason": g}
                continue
            r, views = evaluate_object(g, obj, self.cfg.protocol, gt=gt, lpips=self.lpips, return_views=True,
                                       canonical=self.cfg.job.mode != "thumbnail")
            r["status"] = "done"
            rec["models"][model] = r
            self.out.write(f"objects/{name}/{model}_views.png", encode_png(_strip(views["aligned"], 3)))
            if self.cfg.job.exports and not isinstance(g, Gaussians):  # a reconstruction: its mesh, our frame
                try:
                    self.out.write(f"objects/{name}/{model}.glb",
                                   export.mesh_glb(g.mesh(self.cfg.protocol.mesh_resolution // 2 or 64)))
                except ValueError as e:
                    r["glb_skipped"] = str(e)
            elif self.cfg.job.exports:
                g_out = g
                if self.cfg.protocol.align and "transform_render_space" in r["aligned"]:
                    g_out = g.transform(r["normalisation"]).transform(r["aligned"]["transform_render_space"])
                self.out.write(f"objects/{name}/{model}.ply", g_out.to_ply_bytes())
                try:
                    self.out.write(f"objects/{name}/{model}.glb",
                                   export.mesh_glb(export.gaussians_mesh(g_out,
                                                                         self.cfg.protocol.mesh_resolution // 2 or 64)))
                except ValueError as e:
                    r["glb_skipped"] = str(e)
        if rec["models"] and all(m.get("status") == "failed" for m in rec["models"].values()):
            rec["status"] = "failed"
            rec["reason"] = "; ".join(f"{k}: {v['reason']}" for k, v in rec["models"].items())
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        self.out.write(f"objects/{name}.json", json.dumps(rec, indent=1, default=float).encode())
        return rec

    def __call__(self, names: list[str]) -> list[dict]:
        rows = []
        for name in names:
            t = time.perf_counter()
            try:
                rec = self.evaluate(name)
                rows.append({"object": name, "status": rec["status"], "reason": rec.get("reason", ""),
                             "seconds": time.perf_counter() - t})
            except Exception as e:  # noqa: BLE001 - one object's failure is recorded, the job goes on
                reason = f"{type(e).__name__}: {e}"
                log.warning("object %s failed: %s\n%s", name, reason, traceback.format_exc(limit=3))
                self.out.write(f"objects/{name}.json", json.dumps({"object": name, "status": "failed",
                                                                   "reason": reason}).encode())
                rows.append({"object": name, "status": "failed", "reason": reason, "seconds": time.perf_counter() - t})
        return rows
