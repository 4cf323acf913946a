"""Gaussian splatting renderer: gsplat on CUDA, our own pure-torch rasterizer on CPU.

The pure-torch rasterizer follows gsplat's "classic" conventions so it can serve as the test
oracle for gsplat on GPU: EWA projection with +0.3 px^2 dilation, pixel centres at +0.5,
alpha = min(0.999, opacity * exp(-sigma)), Gaussians with alpha < 1/255 skipped, depth-sorted
front-to-back compositing that stops before transmittance would fall to 1e-4, background
blended with the final transmittance. It is differentiable w.r.t. every Gaussian parameter and
works tile by tile, in chunks of Gaussians, so memory stays bounded for 65k Gaussians at 512^2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..gaussians import Gaussians, quat_to_rotmat
from ..geometry.cameras import Cameras

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
EPS2D = 0.3
NEAR_PLANE = 0.2  # LGM's rasterizer culls camera-space depth <= 0.2 (spec §1.5)
FAR_PLANE = 1e10


@dataclass
class RenderOutput:
    rgb: torch.Tensor  # (B, C, 3, H, W) in [0, 1]
    alpha: torch.Tensor  # (B, C, 1, H, W) accumulated opacity
    depth: torch.Tensor  # (B, C, 1, H, W) expected camera-space depth (0 where alpha is 0)


def project_gaussians(means, quats, scales, viewmat, K, width, height, camera_model="pinhole", eps2d=EPS2D):
    """EWA projection of N Gaussians into one camera (gsplat's conventions).

    Returns means2d (N,2) in pixels, conics (N,3) = (a, b, c) of the inverse 2D covariance,
    cov2d (N,2,2) with dilation, depth (N,) and det (N,) of the dilated covariance.
    """
    rot = viewmat[:3, :3]
    p = means @ rot.T + viewmat[:3, 3]
    x, y, z = p.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    rs = quat_to_rotmat(quats) * scales[..., None, :]  # R S
    cov_world = rs @ rs.transpose(-1, -2)
    cov_cam = rot @ cov_world @ rot.T
    zeros = torch.zeros_like(z)
    if camera_model == "pinhole":
        zs = torch.where(z.abs() > 1e-8, z, torch.full_like(z, 1e-8))
        tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
        tx = zs * torch.clamp(x / zs, -(cx / fx + 0.3 * tan_fovx), (width - cx) / fx + 0.3 * tan_fovx)
        ty = zs * torch.clamp(y / zs, -(cy / fy + 0.3 * tan_fovy), (height - cy) / fy + 0.3 * tan_fovy)
        jac = torch.stack([fx / zs, zeros, -fx * tx / zs ** 2, zeros, fy / zs, -fy * ty / zs ** 2], -1).reshape(-1, 2, 3)
        means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    elif camera_model == "ortho":
        ones = torch.ones_like(z)
        jac = torch.stack([fx * ones, zeros, zeros, zeros, fy * ones, zeros], -1).reshape(-1, 2, 3)
        means2d = torch.stack([fx * x + cx, fy * y + cy], -1)
    else:
        raise ValueError(f"unknown camera model {camera_model!r}")
    cov2d = jac @ cov_cam @ jac.transpose(-1, -2)
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    return means2d, conics, cov2d, z, det


def _rasterize_one(means2d, conics, opac, colors, depth, radii_x, radii_y, valid, width, height, background,
                   tile_size, chunk):
    dev, dt = means2d.device, means2d.dtype
    order = torch.argsort(torch.where(valid, depth, torch.full_like(depth, float("inf"))))
    order = order[valid[order]]
    m2, con, op, col, dep = means2d[order], conics[order], opac[order], colors[order], depth[order]
    rx, ry = radii_x[order], radii_y[order]
    # tile ranges covered by each Gaussian's bounding box (conservative; exact culling is alpha < 1/255)
    tx0 = torch.floor((m2[:, 0] - rx) / tile_size).clamp(min=0)
    tx1 = torch.floor((m2[:, 0] + rx) / tile_size)
    ty0 = torch.floor((m2[:, 1] - ry) / tile_size).clamp(min=0)
    ty1 = torch.floor((m2[:, 1] + ry) / tile_size)
    rows = []
    n_tx, n_ty = math.ceil(width / tile_size), math.ceil(height / tile_size)
    for ty in range(n_ty):
        row_sel = (ty0 <= ty) & (ty1 >= ty)
        y0, y1 = ty * tile_size, min((ty + 1) * tile_size, height)
        tiles = []
        for tx in range(n_tx):
            x0, x1 = tx * tile_size, min((tx + 1) * tile_size, width)
            idx = torch.nonzero(row_sel & (tx0 <= tx) & (tx1 >= tx)).squeeze(1)
            ys, xs = torch.meshgrid(torch.arange(y0, y1, device=dev, dtype=dt) + 0.5,
                                    torch.arange(x0, x1, device=dev, dtype=dt) + 0.5, indexing="ij")
            px, py = xs.reshape(-1, 1), ys.reshape(-1, 1)
            trans = torch.ones(px.shape[0], dtype=dt, device=dev)
            c_acc = torch.zeros(px.shape[0], 3, dtype=dt, device=dev)
            d_acc = torch.zeros(px.shape[0], dtype=dt, device=dev)
            done = torch.zeros(px.shape[0], dtype=torch.bool, device=dev)
            for s in range(0, idx.numel(), chunk):
                j = idx[s:s + chunk]
                dx, dy = m2[j, 0][None] - px, m2[j, 1][None] - py
                a, b, c = con[j, 0][None], con[j, 1][None], con[j, 2][None]
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                alpha = torch.clamp(op[j][None] * torch.exp(-sigma), max=ALPHA_MAX)
                alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
                one_minus = 1.0 - alpha
                t_incl = trans[:, None] * torch.cumprod(one_minus, dim=1)
                t_excl = t_incl / one_minus
                # a pixel stops before the Gaussian that would drop its transmittance to 1e-4
                w = alpha * t_excl * ((t_incl > T_MIN) & ~done[:, None])
                done = done | ((alpha > 0) & (t_incl <= T_MIN)).any(1)
                c_acc = c_acc + w @ col[j]
                d_acc = d_acc + w @ dep[j]
                trans = trans - w.sum(1)
                if bool(done.all()):
                    break
            tiles.append((c_acc.reshape(y1 - y0, x1 - x0, 3), (1 - trans).reshape(y1 - y0, x1 - x0),
                          d_acc.reshape(y1 - y0, x1 - x0)))
        rows.append([torch.cat([t[k] for t in tiles], dim=1) for k in range(3)])
    rgb = torch.cat([r[0] for r in rows], dim=0)
    acc_alpha = torch.cat([r[1] for r in rows], dim=0)
    acc_depth = torch.cat([r[2] for r in rows], dim=0)
    rgb = rgb + (1 - acc_alpha)[..., None] * background
    depth = torch.where(acc_alpha > 0, acc_depth / acc_alpha.clamp_min(1e-10), torch.zeros_like(acc_depth))
    return rgb.permute(2, 0, 1), acc_alpha[None], depth[None]


def rasterize_torch(g: Gaussians, cams: list[Cameras], background, near_plane=NEAR_PLANE, far_plane=FAR_PLANE,
                    tile_size: int = 16, chunk: int = 2048, eps2d: float = EPS2D) -> RenderOutput:
    """Pure-torch reference rasterizer. ``cams``: one Cameras per object (same count and size)."""
    outs = []
    for bi in range(g.batch_size):
        cam = cams[bi]
        viewmats = cam.viewmats.to(g.means)
        Ks = cam.K.to(g.means)
        per_cam = []
        for ci in range(len(cam)):
            means2d, conics, cov2d, depth, det = project_gaussians(
                g.means[bi], g.quats[bi], g.scales[bi], viewmats[ci], Ks[ci], cam.width, cam.height, cam.model, eps2d)
            op = g.opacities[bi]
            extent = torch.sqrt(2.0 * torch.log((op.detach() / ALPHA_MIN).clamp_min(1.0)))
            rx = extent * cov2d[:, 0, 0].detach().clamp_min(0).sqrt() + 1
            ry = extent * cov2d[:, 1, 1].detach().clamp_min(0).sqrt() + 1
            valid = (depth > near_plane) & (depth < far_plane) & (det > 0) & (op >= ALPHA_MIN)
            valid = valid & (means2d[:, 0] + rx > 0) & (means2d[:, 0] - rx < cam.width)
            valid = valid & (means2d[:, 1] + ry > 0) & (means2d[:, 1] - ry < cam.height)
            per_cam.append(_rasterize_one(means2d, conics, op, g.colors[bi], depth, rx, ry, valid.detach(),
                                          cam.width, cam.height, background.to(g.means), tile_size, chunk))
        outs.append([torch.stack([p[k] for p in per_cam]) for k in range(3)])
    return RenderOutput(*(torch.stack([o[k] for o in outs]) for k in range(3)))


def rasterize_gsplat(g: Gaussians, cams: list[Cameras], background, near_plane=NEAR_PLANE, far_plane=FAR_PLANE,
                     eps2d: float = EPS2D) -> RenderOutput:
    """All objects x cameras in one gsplat call (batched leading dimension, no Python loop over views)."""
    try:
        from gsplat import rasterization
    except ImportError as e:
        raise ImportError("the CUDA renderer needs gsplat: pip install 'mvboost[gpu]'") from e
    models = {c.model for c in cams}
    if len(models) != 1:
        raise ValueError(f"one camera model per render call, got {sorted(models)}")
    viewmats = torch.stack([c.viewmats for c in cams]).to(g.means)
    Ks = torch.stack([c.K for c in cams]).to(g.means)
    w, h = cams[0].width, cams[0].height
    colors, alphas, _ = rasterization(
        g.means, g.quats, g.scales, g.opacities, g.colors, viewmats, Ks, w, h,
        near_plane=near_plane, far_plane=far_plane, render_mode="RGB+ED", camera_model=models.pop(),
        rasterize_mode="classic", eps2d=eps2d, packed=False,
    )  # colors (B, C, H, W, 4), alphas (B, C, H, W, 1)
    rgb = colors[..., :3] + (1 - alphas) * background.to(colors)
    return RenderOutput(rgb.permute(0, 1, 4, 2, 3).clamp(0, 1), alphas.permute(0, 1, 4, 2, 3),
                        colors[..., 3:4].permute(0, 1, 4, 2, 3))


def render(gaussians: Gaussians, cameras: Cameras | list[Cameras], background=(1.0, 1.0, 1.0),
           backend: str = "auto", near_plane: float = NEAR_PLANE, far_plane: float = FAR_PLANE,
           **kwargs) -> RenderOutput:
    """Render a batch of objects x cameras -> rgb (B,C,3,H,W), alpha and depth (B,C,1,H,W).

    ``cameras``: one :class:`Cameras` shared by every object, or a list with one per object.
    ``backend``: "auto" (gsplat on CUDA tensors, else torch), "gsplat" or "torch".
    Half-precision Gaussians (fp16/bf16, e.g. straight from a bf16 LGM) are rendered in fp32 (gsplat
    has no bf16 kernels, and fp16 covariances lose the small scales); the outputs are fp32. Gradients
    flow back to the half-precision tensors through the cast.
    """
    if gaussians.means.dtype in (torch.float16, torch.bfloat16):
        gaussians = gaussians.to(torch.float32)
    cams = list(cameras) if isinstance(cameras, (list, tuple)) else [cameras] * gaussians.batch_size
    if len(cams) != gaussians.batch_size:
        raise ValueError(f"{len(cams)} camera sets for {gaussians.batch_size} objects")
    if len({(len(c), c.width, c.height) for c in cams}) != 1:
        raise ValueError("all objects must be rendered with the same number and size of cameras")
    bg = torch.as_tensor(background, dtype=gaussians.means.dtype, device=gaussians.means.device)
    if bg.numel() == 1:
        bg = bg.expand(3)
    if backend == "auto":
        backend = "gsplat" if gaussians.means.is_cuda else "torch"
    if backend == "gsplat":
        return rasterize_gsplat(gaussians, cams, bg, near_plane, far_plane, **kwargs)
    if backend == "torch":
        out = rasterize_torch(gaussians, cams, bg, near_plane, far_plane, **kwargs)
        return RenderOutput(out.rgb.clamp(0, 1), out.alpha, out.depth)
    raise ValueError(f"unknown render backend {backend!r} (auto, gsplat, torch)")


def gaussian_normals(g: Gaussians) -> torch.Tensor:
    """(B,N,3) unit normals: each Gaussian's shortest axis (the rotation column of its smallest scale)."""
    rot = quat_to_rotmat(g.quats)  # (B,N,3,3), columns = local axes in world
    idx = g.scales.argmin(dim=-1)  # (B,N)
    return torch.gather(rot, -1, idx[..., None, None].expand(*idx.shape, 3, 1))[..., 0]


def render_normals(gaussians: Gaussians, cameras: Cameras, background=(1.0, 1.0, 1.0), **kwargs) -> torch.Tensor:
    """Normal maps (B,C,3,H,W) encoded as (n + 1) / 2 in world axes (= the front camera's frame for
    LGM/Era3D cameras), each Gaussian's normal flipped to face the camera, composited on ``background``."""
    if gaussians.means.dtype in (torch.float16, torch.bfloat16):
        gaussians = gaussians.to(torch.float32)
    normals = gaussian_normals(gaussians)
    outs = []
    for ci in range(len(cameras)):
        cam = Cameras(cameras.c2w[ci:ci + 1], cameras.K[ci:ci + 1], cameras.width, cameras.height, cameras.model)
        c2w = cam.c2w[0].to(gaussians.means)
        to_cam = (c2w[:3, 2].expand_as(gaussians.means) if cam.model == "ortho"
                  else c2w[:3, 3] - gaussians.means)
        sign = torch.where((normals * to_cam).sum(-1, keepdim=True) < 0, -1.0, 1.0)
        colours = (normals * sign + 1) / 2
        g = Gaussians(gaussians.means, gaussians.opacities, gaussians.scales, gaussians.quats, colours)
        outs.append(render(g, cam, background=background, **kwargs).rgb[:, 0])
    return torch.stack(outs, dim=1)
