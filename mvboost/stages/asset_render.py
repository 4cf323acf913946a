"""Shards from 3D assets: render what the training reads of an MVBoost sample, from a textured mesh.

Per asset (a GSO-layout folder or a plain OBJ/GLB file, see :mod:`mvboost.assets.gso`): Era3D's six views at
Era3D's orthographic cameras (the input views ``views``), the same six as the targets (``refined``: for a
real asset the renders are the ground truth, nothing to refine), the front view with its alpha as
``input.png`` (``rgba``), ``cameras.json``, and the renderer's name for ``meta.json``. The renderer is
:class:`mvboost.assets.render.MeshRenderer`, the one that renders the evaluation's ground truth.

An asset that cannot be rendered (unreadable mesh, no faces, missing texture, nothing visible) is rejected
with a reason that names it; the job goes on.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..geometry.cameras import ERA3D_ORTHO_WORLD_WIDTH, era3d_cameras
from ..io.codec import encode_array, to_uint8
from .base import Reject, Resources, Stage
from .common import era3d_camera_json, require


@dataclass
class AssetRenderConfig:
    size: int = 512  # Era3D's resolution (the views the training reads)
    supersample: int = 2  # render at size x supersample, area-downsample (anti-aliasing, as the evaluation does)
    world_width: float = ERA3D_ORTHO_WORLD_WIDTH  # the orthographic views' extent, as the render stage's
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1.0, batch_size=4, max_actors=0))


class AssetRenderStage(Stage):
    name = "asset_render"
    Config = AssetRenderConfig
    inputs = ("item_id", "asset_root", "asset", "asset_kind")
    outputs = ("rgba", "views", "refined", "cameras", "renderer")
    uses_actor = True  # one renderer (a pybullet client) per worker

    def preflight(self):
        require("pybullet")
        require("trimesh")
        if self.config.size <= 0 or self.config.supersample < 1:
            from ..config import ConfigError

            raise ConfigError(f"asset_render: size must be > 0 and supersample >= 1, got {self.config.size}, "
                              f"{self.config.supersample}")

    def setup(self):
        from ..assets.render import RENDERER, MeshRenderer

        c = self.config
        self.renderer = MeshRenderer()
        self.cams = era3d_cameras(c.size, c.world_width)
        self.cam_json = era3d_camera_json(c.size, c.world_width)
        self.renderer_name = f"{RENDERER}, Era3D orthographic cameras, supersample {c.supersample}"

    def process(self, rows):
        return [self._one(r) for r in rows]

    def _one(self, row):
        from ..assets.gso import AssetError, load_asset

        name = row["asset"]
        cache = Path(tempfile.mkdtemp(prefix="mvboost-asset-"))
        try:
            try:
                obj = load_asset(row["asset_root"], name, row["asset_kind"], cache)
            except AssetError as e:
                return Reject(f"asset {name}: {e}")
            except OSError as e:
                return Reject(f"asset {name}: unreadable ({type(e).__name__}: {str(e)[:200]})")
            rgb, alpha = self.renderer.render(obj, self.cams, self.config.supersample)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        if float(alpha.max()) <= 0:
            return Reject(f"asset {name}: empty render (nothing visible from Era3D's cameras)")
        views = to_uint8(rgb)
        rgba = np.concatenate([views[0], to_uint8(alpha[0])], axis=-1)
        return {"rgba": encode_array(rgba), "views": encode_array(views), "refined": encode_array(views),
                "alpha": encode_array(to_uint8(alpha)),  # the renderer's alpha: the training mask's ground truth
                "cameras": self.cam_json, "renderer": self.renderer_name}


__all__ = ["AssetRenderStage", "AssetRenderConfig"]
