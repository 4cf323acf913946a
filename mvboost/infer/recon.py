"""One interface for what a reconstruction model returns, whatever it represents the object with.

A :class:`Reconstruction` renders itself at any :class:`~mvboost.geometry.cameras.Cameras` of our world (OpenGL
camera-to-world, Y up, the input view's camera on +Z) and gives a coloured mesh in that world. OpenLRM's
triplane NeRF (:class:`TriplaneReconstruction`) implements it; the evaluation (``eval.score.evaluate_object``)
scores Gaussians as they are and anything else through this interface, so a third model is one more class
here. LGM's Gaussians do not go through it: the evaluation transforms them exactly and the exports write
them as PLY.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from ..geometry.cameras import ZUP_TO_YUP, Cameras


class Reconstruction(Protocol):
    def render(self, cams: Cameras, background: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """rgb (V, H, W, 3) and alpha (V, H, W, 1), float32 in [0, 1], composited on ``background``."""

    def mesh(self, resolution: int):
        """A ``trimesh.Trimesh`` with vertex colours, in our world frame."""


class TriplaneReconstruction:
    """OpenLRM's output: triplanes, rendered by the model's ray marcher, in our world frame."""

    def __init__(self, model, planes: torch.Tensor, samples_per_ray: int | None = None, chunk: int = 16384,
                 mesh_threshold: float | None = None):
        self.model, self.planes = model, planes[:1]
        self.samples_per_ray, self.chunk, self.mesh_threshold = samples_per_ray, chunk, mesh_threshold

    @torch.no_grad()
    def render(self, cams: Cameras, background: float = 1.0):
        from ..models.openlrm import world_cameras

        if cams.width != cams.height:
            raise ValueError("OpenLRM renders square images")
        cameras = world_cameras(cams)[None].to(self.planes.device, self.planes.dtype)
        out = self.model.render(self.planes, cameras, cams.width, background, samples_per_ray=self.samples_per_ray,
                                chunk=self.chunk)
        return (out["rgb"][0].permute(0, 2, 3, 1).float().clamp(0, 1).cpu().numpy(),
                out["alpha"][0].permute(0, 2, 3, 1).float().clamp(0, 1).cpu().numpy())

    def mesh(self, resolution: int, threshold: float | None = None):
        from ..models.openlrm import DEFAULT_MESH_THRESHOLD, OPENLRM_SCALE, extract_mesh

        threshold = self.mesh_threshold if threshold is None else threshold
        mesh = extract_mesh(self.model, self.planes, resolution,
                            DEFAULT_MESH_THRESHOLD if threshold is None else threshold, self.chunk)
        mesh.vertices = OPENLRM_SCALE * (np.asarray(mesh.vertices) @ np.array(ZUP_TO_YUP).T)
        return mesh
