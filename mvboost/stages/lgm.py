"""LGM reconstruction (Era3D views 0,2,3,4 + default rays -> Gaussians theta) and rendering of theta at the
6 Era3D orthographic cameras (colour, alpha, normals)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..gaussians import Gaussians
from ..geometry.cameras import ERA3D_ORTHO_WORLD_WIDTH, ERA3D_TO_LGM_VIEWS, era3d_cameras
from ..io.codec import decode_array, encode_array, to_uint8
from .base import Reject, Resources, Stage
from .common import ModelStage, ModelStageConfig, era3d_camera_json, pick_device, pick_dtype, shared_model


@dataclass
class LGMStageConfig(ModelStageConfig):
    model: str = "ashawkey/LGM"
    preset: str = ""  # "": inferred from the checkpoint
    resources: Resources = field(default_factory=lambda: Resources(num_gpus=0.5, batch_size=4))


@dataclass
class RenderConfig:
    size: int = 512  # Era3D's resolution: renders and refined views are pixel-aligned
    world_width: float = ERA3D_ORTHO_WORLD_WIDTH
    device: str = "auto"
    resources: Resources = field(default_factory=lambda: Resources(num_gpus=0.25, batch_size=4))


class LGMStage(ModelStage, Stage):
    name = "lgm"
    Config = LGMStageConfig
    inputs = ("views",)
    outputs = ("gaussians",)

    def setup(self):
        from ..models.loading import load_lgm

        self.device = pick_device(self.config.device)
        self.dtype = pick_dtype(self.config.dtype, self.device)
        path = self.model_path()
        self.model = shared_model(("lgm", str(path), self.config.preset, str(self.device), str(self.dtype)),
                                  lambda: load_lgm(path, preset=self.config.preset or None, dtype=self.dtype,
                                                   device=self.device))

    @torch.no_grad()
    def process(self, rows):
        views = np.stack([decode_array(r["views"])[list(ERA3D_TO_LGM_VIEWS)] for r in rows])  # (B,4,H,W,3)
        x = torch.from_numpy(views).to(self.device).permute(0, 1, 4, 2, 3).float() / 255.0
        inputs = self.model.prepare_inputs(x).to(self.dtype)
        out = self.model(inputs).float().cpu()
        return [{"gaussians": encode_array(g.numpy())} if torch.isfinite(g).all() else Reject("NaN in LGM output")
                for g in out]


class RenderStage(Stage):
    name = "render"
    Config = RenderConfig
    inputs = ("gaussians",)
    outputs = ("renders", "render_alpha", "render_normals", "cameras")

    def setup(self):
        self.device = pick_device(self.config.device)
        self.cams = era3d_cameras(self.config.size, self.config.world_width)
        self.cam_json = era3d_camera_json(self.config.size, self.config.world_width)

    @torch.no_grad()
    def process(self, rows):
        from ..render import render, render_normals

        g = Gaussians.from_lgm(torch.from_numpy(np.stack([decode_array(r["gaussians"]) for r in rows])).to(
            self.device))
        cams = self.cams.to(self.device)
        out = render(g, cams, background=(1.0, 1.0, 1.0))
        normals = render_normals(g, cams)
        res = []
        for i in range(len(rows)):
            if out.alpha[i].max() <= 0:
                res.append(Reject("empty render: no Gaussian visible from the Era3D cameras"))
                continue
            res.append({
                "renders": encode_array(to_uint8(out.rgb[i].permute(0, 2, 3, 1).cpu().numpy())),
                "render_alpha": encode_array(to_uint8(out.alpha[i].permute(0, 2, 3, 1).cpu().numpy())),
                "render_normals": encode_array(to_uint8(normals[i].permute(0, 2, 3, 1).cpu().numpy())),
                "cameras": self.cam_json,
            })
        return res
