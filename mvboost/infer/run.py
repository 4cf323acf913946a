"""Image -> 3D with LGM (base, + a LoRA adapter, or a merged checkpoint): the library behind
``python -m mvboost.infer``.

Per image: matting and recentring (``mvboost.stages.matting``) -> Era3D's 6 views -> LGM Gaussians
(-> optional input-view optimisation, paper §3.4) -> ``gaussians.ply``, ``mesh.glb``, a turntable, the
6 views and ``meta.json``. Models are resolved by ``mvboost.models.hub``: the official checkpoints by default
(Era3D ``pengHTYX/MacLab-Era3D-512-6view``, LGM ``ashawkey/LGM`` fp16_fixrot) from the local Hugging Face cache;
tiny or random models only when asked (``--model tiny``), with a warning that the output is no reconstruction.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import to_dict
from ..gaussians import Gaussians
from ..geometry.cameras import ERA3D_TO_LGM_VIEWS, ERA3D_VIEW_NAMES
from ..io.codec import tile_views, to_uint8
from ..stages.common import pick_device, pick_dtype
from ..stages.era3d import Era3DConfig
from ..stages.lgm import LGMStageConfig
from ..stages.matting import MattingConfig, MattingStage
from .common import Result, item_name, matte_input, model_record, write_summary
from .openlrm import InferOpenLRMConfig
from .view_opt import ViewOptConfig, optimize_input_view


@dataclass
class OutputSection:
    turntable: str = "gif"  # gif, mp4 (needs imageio[ffmpeg]) or none
    turntable_frames: int = 36
    turntable_size: int = 256
    turntable_elevation: float = -15.0  # degrees; negative = from above
    mesh: bool = True
    mesh_resolution: int = 96
    ply_frame: str = "native"  # native (LGM's +Y up) or viewer (-Y up, SuperSplat / COLMAP convention)
    ply_sh_degree: int = 0  # 0, or 3 (zero f_rest_* fields, for viewers that need them)


# the inference defaults: the official checkpoints and matting that takes photographs
@dataclass
class InferMattingConfig(MattingConfig):
    method: str = "auto"


@dataclass
class InferEra3DConfig(Era3DConfig):
    model: str = "pengHTYX/MacLab-Era3D-512-6view"


@dataclass
class InferLGMConfig(LGMStageConfig):
    model: str = "ashawkey/LGM"


#: ``--model tiny`` / ``--model random``: the models of every stage of a backend, with a shorter schedule for
#: the tiny Era3D (they show plumbing, never a reconstruction)
BUILT_MODELS = {
    ("lgm", "tiny"): ["era3d.model=tiny:era3d", "lgm.model=tiny:lgm", "era3d.steps=4"],
    ("lgm", "random"): ["era3d.model=random:era3d", "lgm.model=random:lgm", "era3d.steps=4"],
    ("openlrm", "tiny"): ["openlrm.model=tiny:openlrm"],
    ("openlrm", "random"): ["openlrm.model=random:openlrm"],
}


def models_in_use(cfg: "InferConfig") -> list[tuple[str, str, str]]:
    """(stage, model, revision) of every model ``cfg`` loads."""
    if cfg.backend == "openlrm":
        return [("openlrm", cfg.openlrm.model, cfg.openlrm.revision)]
    return [("era3d", cfg.era3d.model, cfg.era3d.revision), ("lgm", cfg.lgm.model, cfg.lgm.revision)]


def check_models(cfg: "InferConfig") -> str | None:
    """Before anything loads: every model resolvable (else one :class:`ModelNotFound` naming each missing model,
    its revision and the ``hf download`` line); returns a warning line when a model is tiny or random."""
    from ..models.hub import ModelNotFound, check, is_built

    missing, built = [], []
    for stage, model, revision in models_in_use(cfg):
        try:
            check(model, revision, what=stage)  # builds nothing
        except ModelNotFound as e:
            missing.append(str(e))
            continue
        if is_built(model):
            built.append(model)
    if missing:
        raise ModelNotFound("; ".join(missing) + " (or --model tiny to try the plumbing with tiny random models)")
    if built:
        return (f"warning: {', '.join(built)}: models with random weights, the output is not a reconstruction "
                "(without --model the official checkpoints are used)")
    return None


@dataclass
class InferConfig:
    backend: str = "lgm"  # lgm (Era3D's views -> LGM Gaussians) or openlrm (the image -> OpenLRM triplanes)
    device: str = "auto"
    batch_size: int = 4
    seed: int = 0
    lora: str = ""  # a peft adapter folder (train run checkpoint_*/adapter); "" = none
    optimize_input_view: bool = False
    matting: InferMattingConfig = field(default_factory=InferMattingConfig)
    era3d: InferEra3DConfig = field(default_factory=InferEra3DConfig)
    lgm: InferLGMConfig = field(default_factory=InferLGMConfig)
    view_opt: ViewOptConfig = field(default_factory=ViewOptConfig)
    output: OutputSection = field(default_factory=OutputSection)
    openlrm: InferOpenLRMConfig = field(default_factory=InferOpenLRMConfig)


def image_to_3d(cfg: InferConfig):
    """The runner of ``cfg.backend``: :class:`ImageTo3D` (LGM) or :class:`~mvboost.infer.openlrm.OpenLRMImageTo3D`."""
    if cfg.backend == "openlrm":
        from .openlrm import OpenLRMImageTo3D

        return OpenLRMImageTo3D(cfg)
    if cfg.backend != "lgm":
        raise ValueError(f"backend must be lgm or openlrm, got {cfg.backend!r}")
    return ImageTo3D(cfg)


# ---- models ---------------------------------------------------------------------------------------------
def load_reconstructor(cfg: InferConfig, device: torch.device, dtype: torch.dtype):
    """LGM from ``cfg.lgm``, with ``cfg.lora`` merged in when given."""
    from ..models.loading import load_model

    return load_model(f"lgm:{cfg.lgm.model}", revision=cfg.lgm.revision, adapter=cfg.lora,
                      preset=cfg.lgm.preset or None, device=device, dtype=dtype)


@torch.no_grad()
def gaussians_from_views(lgm, views: np.ndarray, device) -> Gaussians:
    """(B, 4, H, W, 3) views in [0, 1] on white (LGM's input views: front, right, back, left) with LGM's
    default rays -> Gaussians (B, N) float32 on ``device``."""
    dtype = next(lgm.parameters()).dtype
    x = torch.from_numpy(np.ascontiguousarray(views)).to(device).permute(0, 1, 4, 2, 3).float()
    return Gaussians.from_lgm(lgm(lgm.prepare_inputs(x).to(dtype)).float())


class ImageTo3D:
    """Loads the models once; ``__call__(sources, output)`` writes one folder per image."""

    def __init__(self, cfg: InferConfig):
        from ..models.era3d_pipeline import Era3DPipeline
        from ..models.hub import resolve

        self.cfg = cfg
        cfg.view_opt.check()
        if cfg.output.turntable not in ("gif", "mp4", "none"):
            raise ValueError(f"output.turntable must be gif, mp4 or none, got {cfg.output.turntable!r}")
        if cfg.output.ply_frame not in ("native", "viewer") or cfg.output.ply_sh_degree not in (0, 3):
            raise ValueError(f"output.ply_frame must be native or viewer and output.ply_sh_degree 0 or 3, got "
                             f"{cfg.output.ply_frame!r} and {cfg.output.ply_sh_degree!r}")
        self.device = pick_device(cfg.device)
        self.era3d_dtype = pick_dtype(cfg.era3d.dtype, self.device)
        self.lgm_dtype = pick_dtype(cfg.lgm.dtype, self.device)
        self.matting = MattingStage(cfg.matting)
        self.matting.ensure_setup()
        self.era3d = Era3DPipeline(resolve(cfg.era3d.model, cfg.era3d.revision, what="era3d"), device=self.device,
                                   dtype=self.era3d_dtype, attention_upcast=cfg.era3d.attention_upcast)
        self.lgm = load_reconstructor(cfg, self.device, self.lgm_dtype)
        self.models = {"era3d": model_record(cfg.era3d.model, cfg.era3d.revision, "era3d"),
                       "lgm": model_record(cfg.lgm.model, cfg.lgm.revision, "lgm",
                                           str(Path(cfg.lora).resolve()) if cfg.lora else "")}
        self._lpips = None

    def lpips(self):
        if self._lpips is None:
            from ..metrics.lpips import load_lpips

            self._lpips = load_lpips(self.cfg.view_opt.lpips_net, device=self.device)
        return self._lpips

    @torch.no_grad()
    def multiview(self, rgba: list[np.ndarray], seeds: list[int]):
        """RGBA inputs -> Era3D's output (6 colour + 6 normal views, the condition images)."""
        c = self.cfg.era3d
        return self.era3d.generate(rgba, seeds=seeds, steps=c.steps, guidance=c.guidance, eta=c.eta,
                                   crop_size=c.crop_size or None)

    def gaussians(self, views: np.ndarray, lgm=None) -> Gaussians:
        """:func:`gaussians_from_views` with this runner's LGM (or ``lgm``) on its device."""
        return gaussians_from_views(lgm or self.lgm, views, self.device)

    def reconstruct(self, rgba: list[np.ndarray], seeds: list[int], lgm=None):
        """RGBA inputs -> (Era3D output, Gaussians (B,N) float32 on the device)."""
        mv = self.multiview(rgba, seeds)
        return mv, self.gaussians(mv.colors[:, list(ERA3D_TO_LGM_VIEWS)], lgm)

    def __call__(self, sources: list[str], output: str | Path, progress=None) -> list[Result]:
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
        results = [Result(item_name(s, taken), s) for s in sources]
        ready: list[tuple[Result, np.ndarray]] = []
        for r in results:
            rgba = matte_input(self.matting, r)
            if rgba is not None:
                ready.append((r, rgba))
            if r.rejected and progress:
                progress.update(1)
        bs = max(1, self.cfg.batch_size)
        for i in range(0, len(ready), bs):
            batch = ready[i:i + bs]
            t = time.perf_counter()
            seeds = [self.cfg.seed + results.index(r) for r, _ in batch]
            mv, g = self.reconstruct([rgba for _, rgba in batch], seeds)
            per_item = (time.perf_counter() - t) / len(batch)
            for j, (r, rgba) in enumerate(batch):
                r.meta["seconds"]["era3d+lgm"] = round(per_item, 3)
                self._finish(r, output, rgba, mv, j, g[j], seeds[j])
                if progress:
                    progress.update(1)
        write_summary(output, results)
        return results

    def _finish(self, r: Result, output: Path, rgba, mv, j: int, g: Gaussians, seed: int) -> None:
        from PIL import Image

        from ..io import export

        folder = output / r.name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgba, "RGBA").save(folder / "input_rgba.png")
        views = to_uint8(mv.colors[j])
        for name, v in zip(ERA3D_VIEW_NAMES, views):
            Image.fromarray(v).save(folder / f"view_{name}.png")
        Image.fromarray(tile_views(views)).save(folder / "views.png")
        t = time.perf_counter()
        if self.cfg.optimize_input_view:
            target = torch.from_numpy(np.ascontiguousarray(mv.cond_images[j])).permute(2, 0, 1).float()
            res = optimize_input_view(g, target.to(self.device), self.cfg.view_opt, self.lpips())
            export.write_ply(g, folder / "gaussians_before_view_opt.ply")
            g = res.gaussians
            r.meta["input_view_optimisation"] = res.report()
            r.meta["seconds"]["input_view_optimisation"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        g = g.to("cpu")
        export.write_ply(g, folder / "gaussians.ply", frame=self.cfg.output.ply_frame,
                         sh_degree=self.cfg.output.ply_sh_degree)
        r.meta["ply"] = {"frame": self.cfg.output.ply_frame, "sh_degree": self.cfg.output.ply_sh_degree}
        out = self.cfg.output
        files = ["input_rgba.png", "views.png", *[f"view_{n}.png" for n in ERA3D_VIEW_NAMES], "gaussians.ply"]
        if out.mesh:
            try:
                export.write_glb(g, folder / "mesh.glb", resolution=out.mesh_resolution)
                files.append("mesh.glb")
            except ValueError as e:  # an empty density field: recorded, the other outputs stand
                r.meta["mesh_skipped"] = str(e)
        if out.turntable != "none":
            frames = export.turntable_frames(g, out.turntable_frames, out.turntable_size, out.turntable_elevation)
            export.write_turntable(frames, folder / f"turntable.{out.turntable}")
            files.append(f"turntable.{out.turntable}")
        r.meta["seconds"]["exports"] = round(time.perf_counter() - t, 3)
        r.meta.update(input=r.source, seed=seed, device=str(self.device), gaussians=int(g.means.shape[1]),
                      models=self.models, files=files + ["meta.json"],
                      era3d={"steps": self.cfg.era3d.steps, "guidance": self.cfg.era3d.guidance,
                             "dtype": str(self.era3d_dtype).removeprefix("torch.")},
                      config=to_dict(self.cfg))
        (folder / "meta.json").write_text(json.dumps(r.meta, indent=2, default=str))
        r.folder = folder
