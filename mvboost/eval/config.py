"""The evaluation job's configuration: sections, the modes, model specs (``name=<ref>[@revision][+<adapter>]``)
checked once, where the objects come from and each object's seed.

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
from dataclasses import dataclass, field
from pathlib import Path

from ..config import RaySection
from ..infer.openlrm import InferOpenLRMConfig
from ..infer.run import InferEra3DConfig, InferLGMConfig, InferMattingConfig
from ..stages.base import Resources
from .protocol import Protocol

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
