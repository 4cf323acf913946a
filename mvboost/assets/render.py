"""Views of a textured mesh, on CPU with no GL: pybullet's TinyRenderer.

Unlit albedo (ambient 1, no diffuse/specular: GSO textures carry baked lighting), composited on white,
at any pinhole or orthographic cameras. With ``supersample`` > 1 the views are rendered larger and
area-downsampled. The one mesh renderer of the project: the evaluation's ground truth and the asset
shards' views (Era3D's orthographic cameras) both come from it, so the two cannot drift.

TinyRenderer ignores orthographic projection matrices (it draws nothing), so an orthographic camera is
rendered as a pinhole camera :data:`ORTHO_DISTANCE` away along the same axis, with the field of view that
spans the same world width at the origin: for geometry in the unit cube the magnification differs from
orthographic by at most 0.87 / ORTHO_DISTANCE (0.9 %, a third of a pixel at 64 px; tested).
"""
from __future__ import annotations

import numpy as np
import torch

from ..geometry.cameras import PINHOLE_FOR_ORTHO, Cameras
from .gso import GSOObject

RENDERER = "pybullet ER_TINY_RENDERER (CPU, no GL), unlit albedo"
ORTHO_DISTANCE = PINHOLE_FOR_ORTHO  # distance of the pinhole camera that stands in for an orthographic one


def fovy_deg(cams: Cameras) -> float:
    """The vertical field of view of pinhole cameras, from their intrinsics."""
    return float(np.degrees(2 * np.arctan(0.5 * cams.height / float(cams.K[0, 1, 1]))))


def pinhole_views(cams: Cameras) -> tuple[np.ndarray, float, float, float]:
    """(c2w (V,4,4) float64, fovy in degrees, near, far) of the pinhole cameras that render ``cams``; an
    orthographic camera becomes a distant pinhole on its axis (see the module's note)."""
    if cams.model != "ortho":
        return cams.c2w.double().numpy().copy(), fovy_deg(cams), 0.01, 100.0
    pin = cams.to(dtype=torch.float64).as_pinhole(ORTHO_DISTANCE)
    return pin.c2w.numpy().copy(), fovy_deg(pin), ORTHO_DISTANCE - 2.0, ORTHO_DISTANCE + 2.0


def downsample(img: np.ndarray, factor: int) -> np.ndarray:
    """(..., H, W, C) area downsampling by an integer factor."""
    if factor == 1:
        return img
    h, w = img.shape[-3] // factor, img.shape[-2] // factor
    return img.reshape(*img.shape[:-3], h, factor, w, factor, img.shape[-1]).mean(axis=(-4, -2))


class MeshRenderer:
    """One pybullet DIRECT client per process; ``render(obj, cams)`` -> rgb (V,H,W,3) on white, alpha (V,H,W,1)."""

    def __init__(self):
        try:
            import pybullet
        except ImportError as e:
            raise ImportError("ground-truth rendering needs pybullet: pip install 'mvboost[eval]'") from e
        self.pb = pybullet
        self.client = pybullet.connect(pybullet.DIRECT)

    def _load(self, obj: GSOObject) -> int:
        pb = self.pb
        pb.resetSimulation(physicsClientId=self.client)
        t = obj.transform
        scale = float(np.linalg.norm(t[:3, 0]))
        rot = t[:3, :3] / scale
        # pybullet: world = R_base (meshScale * v) + p_base, our transform: world = s R v + t
        quat = _rotmat_to_xyzw(rot)
        with _quiet_stdout():  # pybullet's importer prints (to fd 1) every place it looked for the mtl's texture,
            # when the shape is created and again when the body is (GSO's mtl names the texture where it is not)
            shape = pb.createVisualShape(pb.GEOM_MESH, fileName=str(obj.folder / "meshes" / "model.obj"),
                                         meshScale=[scale] * 3, physicsClientId=self.client)
            body = pb.createMultiBody(baseVisualShapeIndex=shape, basePosition=t[:3, 3].tolist(),
                                      baseOrientation=quat, physicsClientId=self.client)
        if obj.texture is not None:
            tex = pb.loadTexture(str(obj.texture), physicsClientId=self.client)
            pb.changeVisualShape(body, -1, textureUniqueId=tex, rgbaColor=[1, 1, 1, 1], physicsClientId=self.client)
        else:  # TinyRenderer ignores the mtl's Kd: an untextured mesh would be white on white
            pb.changeVisualShape(body, -1, rgbaColor=[*obj.colour, 1], physicsClientId=self.client)
        return body

    def render(self, obj: GSOObject, cams: Cameras, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
        pb = self.pb
        self._load(obj)
        size = cams.width * supersample
        poses, fovy, near, far = pinhole_views(cams)
        proj = pb.computeProjectionMatrixFOV(fovy, 1.0, near, far, physicsClientId=self.client)
        rgbs, alphas = [], []
        for c2w in poses:
            view = np.linalg.inv(c2w).T.reshape(-1).tolist()  # OpenGL world-to-camera, column-major
            _, _, rgba, _, seg = pb.getCameraImage(size, size, view, proj, renderer=pb.ER_TINY_RENDERER, shadow=0,
                                                   lightAmbientCoeff=1.0, lightDiffuseCoeff=0.0,
                                                   lightSpecularCoeff=0.0, physicsClientId=self.client)
            rgba = np.asarray(rgba, np.uint8).reshape(size, size, 4)
            a = (np.asarray(seg).reshape(size, size, 1) >= 0).astype(np.float32)
            rgb = rgba[..., :3].astype(np.float32) / 255.0 * a + (1 - a)
            rgbs.append(downsample(rgb, supersample))
            alphas.append(downsample(a, supersample))
        return np.stack(rgbs), np.stack(alphas)

    def close(self):
        self.pb.disconnect(self.client)


class _quiet_stdout:
    """Silence C-level writes to fd 1 (pybullet's importer warnings) for a block."""

    def __enter__(self):
        import os
        import sys

        sys.stdout.flush()
        self._saved = os.dup(1)
        self._null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self._null, 1)

    def __exit__(self, *exc):
        import ctypes
        import os

        try:
            ctypes.CDLL(None).fflush(None)  # C stdio buffers go to /dev/null too
        except (OSError, AttributeError):
            pass
        os.dup2(self._saved, 1)
        os.close(self._saved)
        os.close(self._null)


def _rotmat_to_xyzw(r: np.ndarray) -> list[float]:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(r).as_quat().tolist()  # scipy: (x, y, z, w), pybullet's order


def normal_maps(obj: GSOObject, cams: Cameras, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Normal maps of a mesh at orthographic cameras, the ground truth of Era3D's normal domain: each visible
    face's normal in world axes (= the front camera's frame for Era3D's cameras), turned to face the camera,
    encoded (n + 1) / 2 and composited on white; plus the coverage (alpha). Returns ((V,H,W,3), (V,H,W,1)).

    A z-buffer rasterizer in numpy (pixel centres, flat shading); TinyRenderer cannot draw normals. The
    silhouette matches :meth:`MeshRenderer.render`'s at the same cameras up to edge pixels (tested)."""
    if cams.model != "ortho":
        raise ValueError("normal_maps draws orthographic cameras only (Era3D's)")
    verts, faces = np.asarray(obj.vertices, np.float64), np.asarray(obj.faces, np.int64)
    tri = verts[faces]  # (F, 3, 3)
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    fn = fn / np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-12)
    size = cams.width * supersample
    normals, alphas = [], []
    for c2w, k in zip(cams.c2w.double().numpy(), cams.K.double().numpy()):
        f = k[0, 0] * supersample
        rot, pos = c2w[:3, :3], c2w[:3, 3]
        cam = (tri - pos) @ rot  # camera coordinates (OpenGL: x right, y up, looking along -z)
        u = cam[..., 0] * f + size / 2  # pixel coordinates (continuous, pixel centres at i + 0.5)
        v = -cam[..., 1] * f + size / 2
        depth = -cam[..., 2]
        zbuf = np.full((size, size), np.inf)
        face_at = np.full((size, size), -1, np.int64)
        for i in range(len(faces)):
            x0, x1 = int(np.floor(u[i].min() - 0.5)), int(np.ceil(u[i].max() - 0.5))
            y0, y1 = int(np.floor(v[i].min() - 0.5)), int(np.ceil(v[i].max() - 0.5))
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size - 1), min(y1, size - 1)
            if x1 < x0 or y1 < y0:
                continue
            px, py = np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)
            (ax, bx, cx), (ay, by, cy) = u[i], v[i]
            area = (bx - ax) * (cy - ay) - (cx - ax) * (by - ay)
            if abs(area) < 1e-12:
                continue
            w0 = ((bx - px) * (cy - py) - (cx - px) * (by - py)) / area
            w1 = ((cx - px) * (ay - py) - (ax - px) * (cy - py)) / area
            w2 = 1.0 - w0 - w1
            inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
            if not inside.any():
                continue
            z = w0 * depth[i, 0] + w1 * depth[i, 1] + w2 * depth[i, 2]
            window = zbuf[y0:y1 + 1, x0:x1 + 1]
            nearer = inside & (z < window)
            window[nearer] = z[nearer]
            face_at[y0:y1 + 1, x0:x1 + 1][nearer] = i
        hit = face_at >= 0
        n = fn[np.where(hit, face_at, 0)]
        n = np.where(((n @ rot[:, 2]) < 0)[..., None], -n, n)  # face the camera (its +z axis points back at it)
        a = hit[..., None].astype(np.float32)
        img = ((n + 1) / 2).astype(np.float32) * a + (1 - a)
        normals.append(downsample(img, supersample))
        alphas.append(downsample(a, supersample))
    return np.stack(normals), np.stack(alphas)
