"""A batch of 3D Gaussians and PLY I/O in the standard 3DGS layout (spec models.md §1.5)."""
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
    def to_ply_bytes(self, index: int = 0, min_opacity: float = PLY_MIN_OPACITY) -> bytes:
        """One object as a binary little-endian 3DGS PLY (x,y,z, f_dc_0..2, opacity, scale_0..2, rot_0..3)."""
        from plyfile import PlyData, PlyElement

        g = self[index].to(device="cpu", dtype=torch.float32)
        keep = g.opacities[0] >= min_opacity
        means = g.means[0][keep].numpy()
        f_dc = ((g.colors[0][keep] - 0.5) / SH_C0).numpy()
        op = g.opacities[0][keep].clamp(1e-7, 1 - 1e-7)
        logit = torch.log(op / (1 - op)).numpy()
        log_scale = torch.log(g.scales[0][keep] + 1e-8).numpy()
        rot = g.quats[0][keep].numpy()
        names = (["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2"]
                 + [f"rot_{i}" for i in range(4)])
        arr = np.empty(means.shape[0], dtype=[(n, "<f4") for n in names])
        cols = np.concatenate([means, f_dc, logit[:, None], log_scale, rot], axis=1)
        for j, n in enumerate(names):
            arr[n] = cols[:, j]
        buf = io.BytesIO()
        PlyData([PlyElement.describe(arr, "vertex")], byte_order="<").write(buf)
        return buf.getvalue()

    def save_ply(self, path, index: int = 0, min_opacity: float = PLY_MIN_OPACITY) -> None:
        with open(path, "wb") as f:
            f.write(self.to_ply_bytes(index, min_opacity))

    @classmethod
    def from_ply(cls, src) -> "Gaussians":
        """Read a 3DGS PLY (path, file object or bytes); SH degree 0 colours only."""
        from plyfile import PlyData

        if isinstance(src, (bytes, bytearray)):
            src = io.BytesIO(src)
        v = PlyData.read(src)["vertex"]

        def col(*names):
            return torch.from_numpy(np.stack([np.asarray(v[n], dtype=np.float32) for n in names], axis=1))

        means = col("x", "y", "z")
        colors = SH_C0 * col("f_dc_0", "f_dc_1", "f_dc_2") + 0.5
        opacities = torch.sigmoid(col("opacity")[:, 0])
        scales = torch.exp(col("scale_0", "scale_1", "scale_2"))
        quats = col("rot_0", "rot_1", "rot_2", "rot_3")
        return cls(means, opacities, scales, quats, colors)


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (...,4) wxyz -> rotation matrices (...,3,3)."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(q.shape[:-1] + (3, 3))
