"""The evaluation's cameras (the protocol's orbit) and the same views of Gaussians; the ground truth is
rendered by :class:`mvboost.assets.render.MeshRenderer` (pybullet's TinyRenderer, CPU, no GL)."""
from __future__ import annotations

import numpy as np
import torch

from ..assets.render import RENDERER, MeshRenderer, downsample, fovy_deg
from ..geometry.cameras import Cameras, orbit_camera, pinhole_intrinsics
from .protocol import Protocol

__all__ = ["RENDERER", "MeshRenderer", "downsample", "fovy_deg", "eval_cameras", "predicted_views", "supersampled"]


def eval_cameras(protocol: Protocol, size: int | None = None,
                 views: list[tuple[float, float]] | None = None) -> Cameras:
    """(elevation, azimuth) pairs (positive elevation = above) -> pinhole cameras at the protocol distance."""
    views = views if views is not None else protocol.orbit()
    size = size or protocol.resolution
    c2w = orbit_camera([-e for e, _ in views], [a for _, a in views], protocol.distance)
    return Cameras(c2w, pinhole_intrinsics(size, size, protocol.fov_deg), size, size, "pinhole")


def supersampled(cams: Cameras, factor: int) -> Cameras:
    """The same pinhole cameras at ``factor`` x the resolution (the field of view kept)."""
    w, h = cams.width * factor, cams.height * factor
    return Cameras(cams.c2w, pinhole_intrinsics(w, h, fovy_deg(cams)), w, h, cams.model)


@torch.no_grad()
def predicted_views(gaussians, cams: Cameras, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The same views of Gaussians with ``mvboost.render`` (white background, same supersampling)."""
    from ..render import render

    out = render(gaussians, supersampled(cams, supersample).to(gaussians.means.device), background=(1.0, 1.0, 1.0))
    rgb = out.rgb[0].permute(0, 2, 3, 1).float().cpu().numpy()
    alpha = out.alpha[0].permute(0, 2, 3, 1).float().cpu().numpy()
    return downsample(rgb, supersample), downsample(alpha, supersample)
