"""Cameras in LGM's conventions, with explicit conversions.

Conventions (docs/models.md, the LGM and Era3D sections):

* World: OpenGL style, +Y up, the front camera sits on +Z.
* Poses are camera-to-world 4x4 matrices in the OpenGL camera convention
  (x right, y up, the camera looks along -Z).
* Orbit cameras (kiui ``orbit_camera``): for elevation ``e`` and azimuth ``a``
  in degrees the camera centre is ``r * (cos e sin a, -sin e, cos e cos a)``.
  Note the minus: a *negative* elevation puts the camera *above* the object.
  Azimuth 0 is the front (+Z), azimuth +90 moves the camera to the viewer's
  right of the front view (onto +X).
* Renderers take world-to-camera matrices in the OpenCV convention
  (x right, y down, z forward) plus intrinsics ``K``.  For a pinhole camera
  ``K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]]`` with ``f = H / (2 tan(fovy/2))``;
  for an orthographic camera ``f`` is pixels per world unit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LGM_FOVY_DEG = 49.1
LGM_CAM_RADIUS = 1.5
LGM_INPUT_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)

#: Era3D's six target views: azimuths relative to the input view, elevation 0.
ERA3D_VIEW_NAMES = ("front", "front_right", "right", "back", "left", "front_left")
ERA3D_AZIMUTHS = (0.0, 45.0, 90.0, 180.0, 270.0, 315.0)
#: Era3D views that feed LGM's four inputs (front, right, back, left), in LGM's order.
ERA3D_TO_LGM_VIEWS = (0, 2, 3, 4)
#: World extent spanned by an orthographic Era3D view when rendering LGM Gaussians:
#: 2 * 1.5 * tan(49.1 deg / 2) = 1.370 (docs/models.md, Era3D; a design decision of this project).
ERA3D_ORTHO_WORLD_WIDTH = 2.0 * LGM_CAM_RADIUS * math.tan(math.radians(LGM_FOVY_DEG) / 2.0)
#: Distance of the orthographic cameras from the origin. It does not change the image,
#: only near-plane culling; 4.0 keeps the whole [-1, 1]^3 cube in front of the camera.
ORTHO_CAM_RADIUS = 4.0

#: rotation taking a Z-up world (GSO, OpenLRM: x, y, z) to ours (Y-up, front on +Z): (x, y, z) -> (x, z, -y)
ZUP_TO_YUP = ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, -1.0, 0.0))

_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


#: distance of the pinhole camera that stands in for an orthographic one in renderers that draw pinholes only
#: (pybullet's TinyRenderer, OpenLRM's ray marcher): for the unit cube, within 0.9 % of orthographic
PINHOLE_FOR_ORTHO = 100.0


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def look_at_opengl(campos: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Rotation (3x3, columns right/up/back) of an OpenGL camera at ``campos`` looking at ``target``.

    World up is +Y. Batched over leading dimensions.
    """
    if target is None:
        target = torch.zeros_like(campos)
    back = _normalize(campos - target)
    up_world = torch.zeros_like(back)
    up_world[..., 1] = 1.0
    right = _normalize(torch.cross(up_world, back, dim=-1))
    up = _normalize(torch.cross(back, right, dim=-1))
    return torch.stack([right, up, back], dim=-1)


def orbit_camera(
    elevation_deg,
    azimuth_deg,
    radius: float = LGM_CAM_RADIUS,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Camera-to-world OpenGL pose(s) of kiui's orbit camera. Scalars give (4,4), sequences (N,4,4)."""
    ele = torch.as_tensor(elevation_deg, dtype=torch.float64)
    azi = torch.as_tensor(azimuth_deg, dtype=torch.float64)
    ele, azi = torch.broadcast_tensors(ele, azi)
    e, a = torch.deg2rad(ele), torch.deg2rad(azi)
    campos = radius * torch.stack([torch.cos(e) * torch.sin(a), -torch.sin(e), torch.cos(e) * torch.cos(a)], dim=-1)
    pose = torch.zeros(ele.shape + (4, 4), dtype=torch.float64)
    pose[..., :3, :3] = look_at_opengl(campos)
    pose[..., :3, 3] = campos
    pose[..., 3, 3] = 1.0
    return pose.to(dtype)


def opengl_to_opencv(c2w: torch.Tensor) -> torch.Tensor:
    """Flip the camera's y and z axes: OpenGL camera-to-world -> OpenCV camera-to-world (an involution)."""
    return c2w @ _GL_TO_CV.to(c2w)


opencv_to_opengl = opengl_to_opencv


def c2w_to_w2c(c2w: torch.Tensor) -> torch.Tensor:
    """Invert rigid poses exactly (R^T, -R^T t)."""
    rot = c2w[..., :3, :3]
    t = c2w[..., :3, 3:]
    out = torch.zeros_like(c2w)
    rt = rot.transpose(-1, -2)
    out[..., :3, :3] = rt
    out[..., :3, 3:] = -rt @ t
    out[..., 3, 3] = 1.0
    return out


w2c_to_c2w = c2w_to_w2c


def focal_from_fovy(height: int, fovy_deg: float = LGM_FOVY_DEG) -> float:
    return 0.5 * height / math.tan(math.radians(fovy_deg) / 2.0)


def pinhole_intrinsics(width: int, height: int, fovy_deg: float = LGM_FOVY_DEG) -> torch.Tensor:
    f = focal_from_fovy(height, fovy_deg)
    return torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def ortho_intrinsics(width: int, height: int, world_width: float = ERA3D_ORTHO_WORLD_WIDTH) -> torch.Tensor:
    """Orthographic 'intrinsics': fx = fy = pixels per world unit, principal point at the centre."""
    f = width / world_width
    return torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


@dataclass
class Cameras:
    """A batch of cameras ready for a renderer.

    ``c2w``: (C,4,4) OpenGL camera-to-world; ``K``: (C,3,3); ``model``: "pinhole" or "ortho".
    """

    c2w: torch.Tensor
    K: torch.Tensor
    width: int
    height: int
    model: str = "pinhole"

    def __post_init__(self):
        if self.model not in ("pinhole", "ortho"):
            raise ValueError(f"camera model must be 'pinhole' or 'ortho', got {self.model!r}")
        if self.c2w.ndim == 2:
            self.c2w = self.c2w[None]
        if self.K.ndim == 2:
            self.K = self.K[None].expand(self.c2w.shape[0], 3, 3)
        if self.K.shape[0] != self.c2w.shape[0]:
            raise ValueError(f"{self.c2w.shape[0]} poses but {self.K.shape[0]} intrinsics")

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def viewmats(self) -> torch.Tensor:
        """World-to-camera in the OpenCV convention (what gsplat and our rasterizer take)."""
        return c2w_to_w2c(opengl_to_opencv(self.c2w))

    def to(self, device=None, dtype=None) -> "Cameras":
        return Cameras(self.c2w.to(device=device, dtype=dtype), self.K.to(device=device, dtype=dtype),
                       self.width, self.height, self.model)

    def as_pinhole(self, distance: float) -> "Cameras":
        """Pinhole cameras that stand in for these: unchanged if already pinhole; an orthographic camera becomes a
        pinhole ``distance`` from the origin on the same axis whose field of view spans the same world extent at
        the origin. For geometry within ``r`` of the origin the magnification differs from orthographic by at most
        r / distance (for renderers that draw pinhole cameras only)."""
        if self.model != "ortho":
            return self
        c2w = self.c2w.clone()
        forward = -c2w[:, :3, 2]
        along = (c2w[:, :3, 3] * forward).sum(-1, keepdim=True)
        c2w[:, :3, 3] = c2w[:, :3, 3] - forward * along - forward * distance  # the axis point nearest the origin,
        k = self.K.clone()  # then back by ``distance``; K's f (pixels per world unit) -> a focal length in pixels
        k[:, 0, 0] = k[:, 0, 0] * distance
        k[:, 1, 1] = k[:, 1, 1] * distance
        return Cameras(c2w, k, self.width, self.height, "pinhole")

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "width": self.width,
            "height": self.height,
            "convention": "c2w OpenGL (x right, y up, -z forward); world +Y up, front camera on +Z",
            "c2w": self.c2w.double().tolist(),
            "K": self.K.double().tolist(),
        }

    @classmethod
    def from_json(cls, d: dict) -> "Cameras":
        return cls(torch.tensor(d["c2w"], dtype=torch.float32), torch.tensor(d["K"], dtype=torch.float32),
                   int(d["width"]), int(d["height"]), d["model"])


def similarity_view(c2w: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Camera-to-world poses (V, 4, 4) that see an object as ``c2w`` sees it after the similarity ``m`` (4x4,
    s R | t): the object stays and the cameras move by m^-1 (a pinhole image is unchanged when the scene and
    the camera scale together)."""
    m = m.to(torch.float64)
    s = float(torch.linalg.norm(m[:3, 0]))
    inv = torch.eye(4, dtype=torch.float64)
    inv[:3, :3] = m[:3, :3].T / s ** 2
    inv[:3, 3] = -inv[:3, :3] @ m[:3, 3]
    out = inv @ c2w.to(torch.float64)
    out[:, :3, :3] = out[:, :3, :3] * s  # unit camera axes again
    return out.to(c2w.dtype)


def lgm_input_cameras(size: int = 256, azimuths=LGM_INPUT_AZIMUTHS, elevation: float = 0.0,
                      radius: float = LGM_CAM_RADIUS, fovy_deg: float = LGM_FOVY_DEG) -> Cameras:
    """LGM's default perspective input cameras (az 0/90/180/270, el 0, r 1.5, fovy 49.1)."""
    c2w = orbit_camera([elevation] * len(azimuths), list(azimuths), radius)
    return Cameras(c2w, pinhole_intrinsics(size, size, fovy_deg), size, size, "pinhole")


def era3d_cameras(size: int = 512, world_width: float = ERA3D_ORTHO_WORLD_WIDTH,
                  radius: float = ORTHO_CAM_RADIUS) -> Cameras:
    """The six Era3D orthographic target views (az 0/45/90/180/270/315, el 0)."""
    c2w = orbit_camera([0.0] * 6, list(ERA3D_AZIMUTHS), radius)
    return Cameras(c2w, ortho_intrinsics(size, size, world_width), size, size, "ortho")


def ray_map(c2w: torch.Tensor, height: int, width: int, fovy_deg: float = LGM_FOVY_DEG):
    """Per-pixel ray origins and unit directions (H,W,3) of a pinhole OpenGL camera."""
    f = focal_from_fovy(height, fovy_deg)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    dirs = torch.stack([(xs - width / 2 + 0.5) / f, -(ys - height / 2 + 0.5) / f, -torch.ones_like(xs)], dim=-1)
    c2w64 = c2w.to(torch.float64)
    d = _normalize(dirs @ c2w64[:3, :3].T)
    o = c2w64[:3, 3].expand_as(d)
    return o.to(c2w.dtype), d.to(c2w.dtype)


def plucker_rays(c2w: torch.Tensor, height: int, width: int, fovy_deg: float = LGM_FOVY_DEG) -> torch.Tensor:
    """Plucker embedding ``[o x d, d]`` as (6,H,W) for one pose, or (V,6,H,W) for (V,4,4) poses."""
    if c2w.ndim == 3:
        return torch.stack([plucker_rays(p, height, width, fovy_deg) for p in c2w])
    o, d = ray_map(c2w, height, width, fovy_deg)
    return torch.cat([torch.cross(o, d, dim=-1), d], dim=-1).permute(2, 0, 1).contiguous()
