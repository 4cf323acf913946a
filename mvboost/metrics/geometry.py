"""Image and geometry metrics of the evaluation protocol (docs/evaluation.md "Metrics").

* PSNR on float RGB in [0,1]; SSIM = scikit-image's Gaussian-window SSIM (sigma 1.5, K1 0.01, K2 0.03,
  data_range 1, per channel then averaged).
* Chamfer distance on surface samples: CD = 1/2 mean_p min_g |p-g| + 1/2 mean_g min_p |g-p| (Euclidean),
  plus the sum and squared variants; F-score at Euclidean thresholds and F_sq@0.05 on squared distances.
* Mesh from Gaussians: opacity-weighted Gaussian density on a grid over [-1,1]^3, marching cubes.
"""
from __future__ import annotations

import numpy as np
import torch

from ..gaussians import Gaussians, quat_to_rotmat


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(gt, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """HxWx3 float images in [0,1]."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(np.asarray(pred, np.float64), np.asarray(gt, np.float64), channel_axis=-1,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=1.0))


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int = 16000, seed: int = 0) -> np.ndarray:
    """n points uniformly by area on a triangle mesh (fixed seed)."""
    rng = np.random.default_rng(seed)
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    idx = rng.choice(len(tri), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[idx]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])


def chamfer_fscore(pred: np.ndarray, gt: np.ndarray, taus=(0.05, 0.1, 0.2)) -> dict:
    from scipy.spatial import cKDTree

    d_pg = cKDTree(gt).query(pred)[0]  # for each predicted point, the nearest GT point
    d_gp = cKDTree(pred).query(gt)[0]
    out = {"cd": 0.5 * d_pg.mean() + 0.5 * d_gp.mean(), "cd_sum": d_pg.mean() + d_gp.mean(),
           "cd_sq": 0.5 * (d_pg ** 2).mean() + 0.5 * (d_gp ** 2).mean()}

    def f(p_ok, g_ok):
        prec, rec = p_ok.mean(), g_ok.mean()
        return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)

    for tau in taus:
        out[f"f@{tau}"] = f(d_pg < tau, d_gp < tau)
    out["f_sq@0.05"] = f(d_pg ** 2 < 0.05, d_gp ** 2 < 0.05)
    return {k: float(v) for k, v in out.items()}


@torch.no_grad()
def gaussian_density(g: Gaussians, resolution: int = 128, bound: float = 1.0,
                     cutoff_sigma: float = 3.0, max_elems: int = 1 << 22) -> np.ndarray:
    """Opacity-weighted sum of the (unnormalised) Gaussian kernels of object 0 on a res^3 grid over [-b, b]^3.

    Each Gaussian touches only the voxels of its ``cutoff_sigma`` box (a cube of half-width r voxels
    around its nearest voxel). Gaussians with the same r are evaluated together, at most ``max_elems``
    (Gaussian, voxel) pairs at a time, and scattered into the grid with ``index_add_``."""
    g = g[0].to(dtype=torch.float32)
    means, op = g.means[0], g.opacities[0]
    rot = quat_to_rotmat(g.quats[0])
    inv_cov = rot @ torch.diag_embed(1.0 / g.scales[0].clamp_min(1e-6) ** 2) @ rot.transpose(1, 2)
    res = resolution
    step = 2 * bound / (res - 1)  # = torch.linspace(-bound, bound, res) spacing
    density = torch.zeros(res ** 3)
    radius = (cutoff_sigma * g.scales[0].max(dim=1).values / step).ceil().long().clamp(max=res)
    centre = ((means + bound) / step).round().long()
    for r in torch.unique(radius).tolist():
        idx = torch.nonzero(radius == r).squeeze(1)
        ar = torch.arange(-r, r + 1)
        offs = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), -1).reshape(-1, 3)  # (M, 3)
        per = max(1, max_elems // len(offs))
        for c0 in range(0, len(idx), per):
            j = idx[c0:c0 + per]
            vox = centre[j][:, None, :] + offs[None]  # (C, M, 3)
            ok = ((vox >= 0) & (vox < res)).all(-1)
            pts = vox.float() * step - bound - means[j][:, None, :]
            m = torch.einsum("cmi,cij,cmj->cm", pts, inv_cov[j], pts)
            val = op[j][:, None] * torch.exp(-0.5 * m)
            flat = (vox[..., 0] * res + vox[..., 1]) * res + vox[..., 2]
            density.index_add_(0, flat[ok], val[ok])
    return density.reshape(res, res, res).numpy()


def gaussians_to_mesh(g: Gaussians, resolution: int = 128, level: float = 0.5, bound: float = 1.0):
    """(vertices, faces) of the density iso-surface at ``level`` (marching cubes, scikit-image), faces wound
    counter-clockwise seen from outside (scikit-image winds them the other way for a density that is higher
    inside, so they are flipped): normals point out, the signed volume is positive."""
    from skimage.measure import marching_cubes

    dens = gaussian_density(g, resolution, bound)
    if dens.max() <= level:
        raise ValueError(f"density never reaches the level {level} (max {dens.max():.3f})")
    verts, faces, _, _ = marching_cubes(dens, level=level, spacing=(2 * bound / (resolution - 1),) * 3)
    return verts - bound, np.ascontiguousarray(faces[:, ::-1])
