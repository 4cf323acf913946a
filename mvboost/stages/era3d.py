"""Era3D stages: multi-view generation (C^pi) and the MVBoost refinement (C-up^pi, SDEdit at strength s).

Both load the same checkpoint through :class:`~mvboost.models.era3d_pipeline.Era3DPipeline`. Loaded
pipelines are shared per process (:func:`~mvboost.stages.common.shared_model`): when ``era3d`` and
``refine`` run in one worker (a fused stage group, see ``job.stages``) the GPU holds one copy of the
weights. With ``compile`` on, batches are padded to ``resources.batch_size`` so the compiled UNet
always sees one shape (objects are independent of the batch composition, so padding changes nothing).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ..io.codec import decode_array, encode_array, to_uint8
from .base import Reject, Resources, Stage
from .common import ModelStage, ModelStageConfig, pad_rows, pick_compile, pick_device, pick_dtype, shared_model


@dataclass
class Era3DConfig(ModelStageConfig):
    model: str = "pengHTYX/MacLab-Era3D-512-6view"
    steps: int = 40
    guidance: float = 3.0
    eta: float = 1.0
    crop_size: int = 0  # 0: 420/512 of the resolution (Era3D's default)
    compile: str = "auto"  # torch.compile the UNet: auto = on CUDA only
    attention_upcast: bool = False  # legacy: q/k/v to fp32 before SDPA (3x slower on GPUs, no more accurate)
    resources: Resources = field(default_factory=lambda: Resources(num_gpus=1.0, batch_size=2))


@dataclass
class RefineConfig(Era3DConfig):
    strength: float = 0.95
    use_rendered_normals: bool = True  # else reuse the first pass's Era3D normals (same frame)
    seed_offset: int = 1  # fresh noise: item seed + offset


class _Era3DBase(ModelStage, Stage):
    def setup(self):
        from ..models.era3d_pipeline import Era3DPipeline

        c = self.config
        device = pick_device(c.device)
        dtype = pick_dtype(c.dtype, device)
        compiled = pick_compile(c.compile, device)
        folder = self.model_path()
        self.pipe = shared_model(("era3d", str(folder), str(device), str(dtype), compiled, c.attention_upcast),
                                 lambda: Era3DPipeline(folder, device=device, dtype=dtype, compile=compiled,
                                                       attention_upcast=c.attention_upcast))

    def _kw(self):
        return dict(steps=self.config.steps, guidance=self.config.guidance, eta=self.config.eta,
                    crop_size=self.config.crop_size or None)

    def _pad(self, rows):
        return pad_rows(rows, self.resources.batch_size, self.pipe.compiled)

    @staticmethod
    def _check(*arrays):
        return all(np.isfinite(a).all() for a in arrays)


class Era3DStage(_Era3DBase):
    name = "era3d"
    Config = Era3DConfig
    inputs = ("rgba", "seed")
    outputs = ("views", "normals", "pose_pred")

    def process(self, rows):
        n, rows = len(rows), self._pad(rows)
        rgba = [decode_array(r["rgba"]) for r in rows]
        out = self.pipe.generate(rgba, seeds=[int(r["seed"]) for r in rows], **self._kw())
        res = []
        for i in range(n):
            if not self._check(out.colors[i], out.normals[i]):
                res.append(Reject("NaN output from Era3D"))
                continue
            pose = None if out.pose_pred is None else {"elevation_rad": float(out.pose_pred[i, 0]),
                                                        "focal_code": float(out.pose_pred[i, 1])}
            res.append({"views": encode_array(to_uint8(out.colors[i])), "normals": encode_array(
                to_uint8(out.normals[i])), "pose_pred": json.dumps(pose)})
        return res


class RefineStage(_Era3DBase):
    name = "refine"
    Config = RefineConfig
    inputs = ("renders", "render_normals", "normals", "rgba", "seed")
    outputs = ("refined", "refined_normals")

    def process(self, rows):
        n, rows = len(rows), self._pad(rows)
        colours = np.stack([decode_array(r["renders"]) for r in rows]).astype(np.float32) / 255.0
        key = "render_normals" if self.config.use_rendered_normals else "normals"
        normals = np.stack([decode_array(r[key]) for r in rows]).astype(np.float32) / 255.0
        out = self.pipe.refine(colours, normals, [decode_array(r["rgba"]) for r in rows], self.config.strength,
                               seeds=[int(r["seed"]) + self.config.seed_offset for r in rows], **self._kw())
        return [{"refined": encode_array(to_uint8(out.colors[i])),
                 "refined_normals": encode_array(to_uint8(out.normals[i]))}
                if self._check(out.colors[i], out.normals[i]) else Reject("NaN output from Era3D refinement")
                for i in range(n)]
