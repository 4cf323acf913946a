"""The evaluation job's library half (no Ray): config, prediction modes, the per-object worker, the
in-process loop. ``ray_jobs/evaluate.py`` fans the same worker out over objects on Ray.

Modes (``job.mode``):
* ``single`` — the paper's setting: the GT input view (RGBA) -> matting -> Era3D -> LGM.
* ``gt4`` — LGM on 4 ground-truth views at its own input cameras (isolates the reconstructor).
* ``gt_ortho`` — LGM on the ground truth at Era3D's orthographic cameras (views 0, 2, 3, 4): exactly the
  input views the single-image chain and MVBoost shards (generated or rendered from assets) give LGM.
* ``ply`` — score ``<folder>/<object>.ply`` files from any 3DGS method (in our world frame, render space).

``job.models``: ``name=<lgm id or folder>[@revision][+<LoRA adapter folder>]`` (single, gt4,
gt_ortho) or ``name=<folder of PLYs>`` (ply). Each object's ground truth is rendered once and reused by every model;
Era3D runs once per object in ``single`` mode and its views feed every model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..config import RaySection, to_dict
from ..gaussians import Gaussians
from ..infer.openlrm import InferOpenLRMConfig
from ..infer.run import InferEra3DConfig, InferLGMConfig, InferMattingConfig
from ..io.codec import encode_png, tile_views
from ..io.files import write_atomic
from ..stages.base import Reject, Resources
from .protocol import Protocol

log = logging.getLogger(__name__)
#: single: the GT input view (camera known) -> Era3D -> LGM; thumbnail: GSO's thumbnails/0.jpg (no camera:
#: only the aligned variant is scored, the pose search is forced); gt4: the GT at LGM's four input cameras;
#: gt_ortho: the GT at Era3D's orthographic cameras 0, 2, 3, 4 (what shards feed LGM); ply: a folder of
#: <object>.ply predictions made elsewhere
MODES = ("single", "thumbnail", "gt4", "gt_ortho", "ply")


@dataclass
class EvalJobSection:
    name: str = "eval"
    objects: str = "fixtures"  # a GSO folder (any fsspec URL), or "fixtures" (built from pybullet_data)
    split: str = "all"  # gso300 | gso30 | all | a file with one object name per line
    output: str = "outputs/eval"
    mode: str = "single"
    models: list[str] = field(default_factory=lambda: ["base=ashawkey/LGM"])
    seed: int = 0
    device: str = "auto"
    exports: bool = True  # each prediction as .ply and .glb
    report: bool = True
    bootstrap: int = 2000  # resamples for the 95 % interval of paired differences
    progress: bool = True


@dataclass
class EvalConfig:
    job: EvalJobSection = field(default_factory=EvalJobSection)
    protocol: Protocol = field(default_factory=Protocol)
    matting: InferMattingConfig = field(default_factory=InferMattingConfig)
    era3d: InferEra3DConfig = field(default_factory=InferEra3DConfig)
    lgm: InferLGMConfig = field(default_factory=InferLGMConfig)  # dtype, device, preset; ids come from job.models
    openlrm: InferOpenLRMConfig = field(default_factory=InferOpenLRMConfig)  # source size, rays; ids from job.models
    worker: Resources = field(default_factory=lambda: Resources(num_cpus=1.0, batch_size=1))
    ray: RaySection = field(default_factory=RaySection)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # LGM id/folder (single, gt4, gt_ortho) or PLY folder (ply)
    revision: str = "main"
    lora: str = ""
    backend: str = "lgm"  # lgm or openlrm (``name=openlrm:<folder | id>``: one image in, modes single/thumbnail)


def parse_model(text: str, mode: str) -> ModelSpec:
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ValueError(f"job.models entries are name=<model>[@revision][+<adapter>], got {text!r}")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"model name {name!r}: letters, digits, '-' and '_' only")
    if mode == "ply":
        return ModelSpec(name, rest)
    from ..models.hub import model_ref

    rest, _, lora = rest.partition("+")
    rest, _, rev = rest.partition("@")
    backend, src = model_ref(rest)
    if backend == "openlrm" and mode not in ("single", "thumbnail"):
        raise ValueError(f"model {name}: OpenLRM takes one image: modes single or thumbnail, not {mode}")
    return ModelSpec(name, src, rev or "main", lora, backend)


def check_config(cfg: EvalConfig) -> list[ModelSpec]:
    if cfg.job.mode not in MODES:
        raise ValueError(f"job.mode must be one of {', '.join(MODES)}, got {cfg.job.mode!r}")
    if cfg.job.mode == "thumbnail" and not cfg.protocol.align:
        raise ValueError("job.mode thumbnail needs protocol.align=true: a thumbnail has no camera, so the pose is "
                         "found by the search (the canonical variant is not scored)")
    cfg.protocol.check()
    specs = [parse_model(m, cfg.job.mode) for m in cfg.job.models]
    if not specs:
        raise ValueError("job.models is empty")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"job.models: duplicate names in {names}")
    if cfg.job.mode == "ply":
        for s in specs:
            if not Path(s.source).is_dir():
                raise FileNotFoundError(f"ply model {s.name}: folder not found: {s.source}")
    else:
        from ..models.hub import check

        for s in specs:
            check(s.source, s.revision, what=f"model {s.name}")
            if s.lora and not (Path(s.lora) / "adapter_config.json").is_file():
                raise FileNotFoundError(f"model {s.name}: not a LoRA adapter folder: {s.lora}")
    return specs


def objects_root(cfg: EvalConfig) -> str:
    if cfg.job.objects == "fixtures":
        from .fixtures import fixtures_root

        return str(fixtures_root())
    return cfg.job.objects


def object_seed(job_seed: int, name: str) -> int:
    return (job_seed * 1_000_003 + int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)) % (2 ** 31)


# ---- output -----------------------------------------------------------------------------------------------
class EvalOutput:
    """``<output>/objects/<name>.json`` (written last, atomically) + ``<output>/objects/<name>/`` files."""

    def __init__(self, url: str):
        import fsspec

        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.root = self.root.rstrip("/")
        self.url = url

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def write(self, rel: str, data: bytes) -> None:
        write_atomic(self.fs, self.path(rel), data)

    def record(self, name: str) -> dict | None:
        p = self.path("objects", f"{name}.json")
        if not self.fs.exists(p):
            return None
        try:
            with self.fs.open(p, "rb") as f:
                return json.loads(f.read())
        except (ValueError, OSError):
            return None

    def done(self, name: str) -> bool:
        rec = self.record(name)
        return rec is not None and rec.get("status") == "done"


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


# ---- the objects to score, and the in-process executor --------------------------------------------------------------
@dataclass
class EvalObjects:
    """The objects of an evaluation run: the split's objects under ``root`` and those not yet scored."""

    root: str
    names: list[str]
    split: dict
    pending: list[str]


def select_objects(cfg: EvalConfig) -> EvalObjects:
    from .gso import list_objects, resolve_split

    check_config(cfg)
    root = objects_root(cfg)
    names, split = resolve_split(cfg.job.split, list_objects(root))
    out = EvalOutput(cfg.job.output)
    pending = [n for n in names if not out.done(n)]
    meta = {"config": to_dict(cfg), "split": split, "objects": names}
    out.write("eval.json", json.dumps(meta, indent=1).encode())
    return EvalObjects(root, names, split, pending)


def summary_header(cfg: EvalConfig, p: EvalObjects) -> dict:
    """What produced a table: mode, renderer, protocol (sha256 + the fields that differ from the default),
    split (name, count, sha256), and every model with its revision, resolved commit and adapter."""
    from ..assets.render import RENDERER

    proto = to_dict(cfg.protocol)
    default = to_dict(Protocol())
    models = []
    for spec in (parse_model(m, cfg.job.mode) for m in cfg.job.models):
        rec = {"name": spec.name, "backend": spec.backend}
        if cfg.job.mode == "ply":
            rec["id"] = spec.source
        else:
            from ..models.hub import model_record

            rec.update(model_record(spec.source, spec.revision, what=spec.name, adapter=spec.lora))
        models.append(rec)
    return {"mode": cfg.job.mode, "renderer": RENDERER,
            "protocol": {"sha256": hashlib.sha256(json.dumps(proto, sort_keys=True).encode()).hexdigest(),
                         "differs_from_default": {k: v for k, v in proto.items() if default.get(k) != v}},
            "split": p.split, "objects_root": p.root, "models": models}


def finish(cfg: EvalConfig, p: EvalObjects) -> dict:
    """Summary tables and the report from the per-object records."""
    from .summary import summarise, write_summary

    out = EvalOutput(cfg.job.output)
    records = [r for r in (out.record(n) for n in p.names) if r is not None]
    summary = summarise(records, [parse_model(m, cfg.job.mode).name for m in cfg.job.models], cfg.job.bootstrap,
                        cfg.job.seed, header=summary_header(cfg, p))
    summary["split"] = p.split
    write_summary(out, summary)
    if cfg.job.report:
        from .report import eval_report

        out.write("report.html", eval_report(out, records, summary).encode())
    return summary


def run_in_process(cfg: EvalConfig, progress=None) -> dict:
    p = select_objects(cfg)
    if p.pending:
        worker = EvalWorker(cfg, p.root)
        for name in p.pending:
            worker([name])
            if progress:
                progress.update(1)
    return finish(cfg, p)
