"""A batch of 3D Gaussians and PLY I/O in the standard 3DGS layout (docs/models.md, LGM)."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

SH_C0 = 0.28209479177387814
PLY_MIN_OPACITY = 0.005


@dataclass
class Gaussians:
    """Batched Gaussians, all activated: means (B,N,3), opacities (B,N), scales (B,N,3) (std-devs),
    quats (B,N,4) unit wxyz, colors (B,N,3) in [0,1]."""

    means: torch.Tensor
    opacities: torch.Tensor
    scales: torch.Tensor
    quats: torch.Tensor
    colors: torch.Tensor

    def __post_init__(self):
        if self.means.ndim == 2:  # a single object
            self.means, self.opacities, self.scales, self.quats, self.colors = (
                t[None] for t in (self.means, self.opacities, self.scales, self.quats, self.colors))
        if self.opacities.ndim == 3:
            self.opacities = self.opacities[..., 0]
        b, n = self.means.shape[:2]
        for name, last in (("scales", 3), ("quats", 4), ("colors", 3)):
            t = getattr(self, name)
            if tuple(t.shape) != (b, n, last):
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {(b, n, last)}")
        if tuple(self.opacities.shape) != (b, n):
            raise ValueError(f"opacities has shape {tuple(self.opacities.shape)}, expected {(b, n)}")

    @classmethod
    def from_lgm(cls, x: torch.Tensor) -> "Gaussians":
        """From LGM's [B, N, 14] tensor (xyz, opacity, scale, rotation wxyz, rgb)."""
        return cls(x[..., 0:3], x[..., 3], x[..., 4:7], x[..., 7:11], x[..., 11:14])

    def to_lgm(self) -> torch.Tensor:
        return torch.cat([self.means, self.opacities[..., None], self.scales, self.quats, self.colors], dim=-1)

    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    def __len__(self) -> int:
        return self.means.shape[1]

    def __getitem__(self, i) -> "Gaussians":
        sel = slice(i, i + 1) if isinstance(i, int) else i
        return Gaussians(self.means[sel], self.opacities[sel], self.scales[sel], self.quats[sel], self.colors[sel])

    def to(self, *args, **kwargs) -> "Gaussians":
        return Gaussians(*(t.to(*args, **kwargs) for t in (self.means, self.opacities, self.scales, self.quats,
                                                           self.colors)))

    def isfinite(self) -> torch.Tensor:
        """(B,) True where every parameter of the object is finite."""
        return torch.stack([torch.isfinite(t).flatten(1).all(1) for t in
                            (self.means, self.opacities, self.scales, self.quats, self.colors)]).all(0)

    # ---- PLY --------------------------------------------------------------------------------
    def to_ply_bytes(self, index: int = 0, min_opacity: float = PLY_MIN_OPACITY, frame: str = "native",
                     sh_degree: int = 0) -> bytes:
        """One object as a binary little-endian 3DGS PLY (x,y,z, f_dc_0..2, [f_rest_*], opacity, scale_0..2,
        rot_0..3). ``frame``: ``native`` (LGM's: +Y up, the front on +Z) or ``viewer`` (turned 180° about X:
        -Y up, as COLMAP-trained scenes and SuperSplat expect); stated in the header as a comment, which
        :meth:`from_ply` reads back. ``sh_degree`` 3 adds 45 zero ``f_rest_*`` (viewers that need SH 3 fields)."""
        from plyfile import PlyData, PlyElement

        if frame not in PLY_FRAMES:
            raise ValueError(f"PLY frame must be one of {sorted(PLY_FRAMES)}, got {frame!r}")
        if sh_degree not in (0, 3):
            raise ValueError(f"PLY sh_degree must be 0 or 3, got {sh_degree!r}")
        g = self[index].to(device="cpu", dtype=torch.float32)
        if frame == "viewer":
            g = g.transform(VIEWER_FROM_NATIVE)
        keep = g.opacities[0] >= min_opacity
        means = g.means[0][keep].numpy()
        f_dc = ((g.colors[0][keep] - 0.5) / SH_C0).numpy()
        op = g.opacities[0][keep].clamp(1e-7, 1 - 1e-7)
        logit = torch.log(op / (1 - op)).numpy()
        log_scale = torch.log(g.scales[0][keep] + 1e-8).numpy()
        rot = g.quats[0][keep].numpy()
        rest = [f"f_rest_{i}" for i in range(SH_REST[sh_degree])]
        names = (["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", *rest, "opacity", "scale_0", "scale_1", "scale_2"]
                 + [f"rot_{i}" for i in range(4)])
        arr = np.zeros(means.shape[0], dtype=[(n, "<f4") for n in names])
        cols = np.concatenate([means, f_dc, logit[:, None], log_scale, rot], axis=1)
        for j, n in enumerate([n for n in names if not n.startswith("f_rest_")]):
            arr[n] = cols[:, j]
        buf = io.BytesIO()
        PlyData([PlyElement.describe(arr, "vertex")], byte_order="<", comments=[PLY_FRAMES[frame]]).write(buf)
        return buf.getvalue()

    def save_ply(self, path, index: int = 0, min_opacity: float = PLY_MIN_OPACITY, frame: str = "native",
                 sh_degree: int = 0) -> None:
        with open(path, "wb") as f:
            f.write(self.to_ply_bytes(index, min_opacity, frame, sh_degree))

    def transform(self, m) -> "Gaussians":
        """The Gaussians under a similarity transform: a 4x4 (s R | t) or a 3x3 rotation R (means, scales and
        orientations; the one owner of this for exports, alignment and evaluation)."""
        m = torch.as_tensor(np.asarray(m), dtype=torch.float64)
        if m.shape == (3, 3):
            m = torch.block_diag(m, torch.ones(1, dtype=torch.float64))
        s = float(torch.linalg.norm(m[:3, 0]))
        r = m[:3, :3] / s
        q = rotmat_to_quat(r).to(self.quats)
        means = self.means @ r.T.to(self.means) * s + m[:3, 3].to(self.means)
        return Gaussians(means, self.opacities, self.scales * s, quat_multiply(q, self.quats), self.colors)

    @classmethod
    def from_ply(cls, src) -> "Gaussians":
        """Read a 3DGS PLY (path, file object or bytes) into our frame (a file whose header says it is in the
        viewer frame is turned back). Colours are the SH degree 0 term: view-dependent ``f_rest_*`` terms, when
        present and non-zero, are dropped with a warning (our renderer has no view dependence)."""
        from plyfile import PlyData

        if isinstance(src, (bytes, bytearray)):
            src = io.BytesIO(src)
        data = PlyData.read(src)
        v = data["vertex"]

        def col(*names):
            return torch.from_numpy(np.stack([np.asarray(v[n], dtype=np.float32) for n in names], axis=1))

        rest = [p.name for p in v.properties if p.name.startswith("f_rest_")]
        if rest and any(np.any(np.asarray(v[n]) != 0) for n in rest):
            import warnings

            warnings.warn(f"PLY: {len(rest)} f_rest_* fields (view-dependent colour) dropped; the Gaussians keep "
                          "their SH degree 0 colour", stacklevel=2)
        means = col("x", "y", "z")
        colors = SH_C0 * col("f_dc_0", "f_dc_1", "f_dc_2") + 0.5
        opacities = torch.sigmoid(col("opacity")[:, 0])
        scales = torch.exp(col("scale_0", "scale_1", "scale_2"))
        quats = col("rot_0", "rot_1", "rot_2", "rot_3")
        g = cls(means, opacities, scales, quats, colors)
        if PLY_FRAMES["viewer"] in data.comments:
            g = g.transform(VIEWER_FROM_NATIVE.T)
        return g


#: the PLY frames and the header comment that names each
PLY_FRAMES = {"native": "mvboost frame native: LGM's world, +Y up, the input view's camera on +Z",
              "viewer": "mvboost frame viewer: -Y up (COLMAP / SuperSplat convention), native turned 180 deg about X"}
#: native -> viewer: 180° about the X axis (x, y, z) -> (x, -y, -z)
VIEWER_FROM_NATIVE = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
SH_REST = {0: 0, 3: 45}  # f_rest_* fields per SH degree (3 colour channels x (degree + 1)^2 - 1)


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a * b of wxyz quaternions (broadcasting)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], dim=-1)


def rotmat_to_quat(m: torch.Tensor) -> torch.Tensor:
    """A rotation matrix (3, 3) -> its unit wxyz quaternion (Shepperd's method: the largest diagonal term)."""
    m = m.double()
    t = torch.trace(m)
    cands = torch.stack([t, m[0, 0], m[1, 1], m[2, 2]])
    k = int(torch.argmax(cands))
    if k == 0:
        r = torch.sqrt(1 + t)
        q = [0.5 * r, (m[2, 1] - m[1, 2]) / (2 * r), (m[0, 2] - m[2, 0]) / (2 * r), (m[1, 0] - m[0, 1]) / (2 * r)]
    elif k == 1:
        r = torch.sqrt(1 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / (2 * r), 0.5 * r, (m[0, 1] + m[1, 0]) / (2 * r), (m[0, 2] + m[2, 0]) / (2 * r)]
    elif k == 2:
        r = torch.sqrt(1 - m[0, 0] + m[1, 1] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / (2 * r), (m[0, 1] + m[1, 0]) / (2 * r), 0.5 * r, (m[1, 2] + m[2, 1]) / (2 * r)]
    else:
        r = torch.sqrt(1 - m[0, 0] - m[1, 1] + m[2, 2])
        q = [(m[1, 0] - m[0, 1]) / (2 * r), (m[0, 2] + m[2, 0]) / (2 * r), (m[1, 2] + m[2, 1]) / (2 * r), 0.5 * r]
    return torch.stack(q).float()


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (...,4) wxyz -> rotation matrices (...,3,3)."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(q.shape[:-1] + (3, 3))
