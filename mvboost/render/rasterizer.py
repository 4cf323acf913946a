"""Gaussian splatting renderer: gsplat on CUDA, our own pure-torch rasterizer on CPU.

The pure-torch rasterizer follows gsplat's "classic" conventions so it can serve as the test
oracle for gsplat on GPU: EWA projection with +0.3 px^2 dilation, pixel centres at +0.5,
alpha = min(0.999, opacity * exp(-sigma)), Gaussians with alpha < 1/255 skipped, depth-sorted
front-to-back compositing that stops before transmittance would fall to 1e-4, background
blended with the final transmittance (gsplat's sigma < 0 skip is implied: conics are positive
definite). It is differentiable w.r.t. every Gaussian parameter.

How it is fast enough for optimisation loops on a CPU without a compiled kernel: all objects x views
are binned into small tiles at once (one sort of (tile, Gaussian) pairs with narrow keys); each round
takes the next ``chunk`` Gaussians of every busy tile, and a Gaussian's exponent over a tile is a
quadratic form in the pixel position, so opacity * exp(-sigma) for all pairs is one batched matmul
and one exp. The backward is written by hand (:class:`_Composite`) and replays the rounds front to
back, so neither pass keeps per-(pixel, Gaussian) activations: memory is bounded by ``max_elems``,
not by image size x Gaussians.
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
NEAR_PLANE = 0.2  # LGM's rasterizer culls camera-space depth <= 0.2 (docs/models.md, LGM)
FAR_PLANE = 1e10


@dataclass
class RenderOutput:
    rgb: torch.Tensor  # (B, C, 3, H, W) in [0, 1]
    alpha: torch.Tensor  # (B, C, 1, H, W) accumulated opacity
    depth: torch.Tensor  # (B, C, 1, H, W) expected camera-space depth (0 where alpha is 0)


def project_gaussians(means, quats, scales, viewmat, K, width, height, camera_model="pinhole", eps2d=EPS2D):
    """EWA projection of Gaussians into cameras (gsplat's conventions).

    ``means`` (..., N, 3), ``quats`` (..., N, 4), ``scales`` (..., N, 3); ``viewmat`` (..., 4, 4) and
    ``K`` (..., 3, 3) with the same leading dimensions (or none: one camera). Returns means2d (..., N, 2)
    in pixels, conics (..., N, 3) = (a, b, c) of the inverse 2D covariance, cov2d (..., N, 2, 2) with
    dilation, depth (..., N) and det (..., N) of the dilated covariance.
    """
    rot = viewmat[..., :3, :3]
    p = means @ rot.transpose(-1, -2) + viewmat[..., None, :3, 3]
    x, y, z = p.unbind(-1)
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    rs = quat_to_rotmat(quats) * scales[..., None, :]  # R S
    cov_world = rs @ rs.transpose(-1, -2)
    rot_ = rot[..., None, :, :]
    cov_cam = rot_ @ cov_world @ rot_.transpose(-1, -2)
    zeros = torch.zeros_like(z)
    if camera_model == "pinhole":
        zs = torch.where(z.abs() > 1e-8, z, torch.full_like(z, 1e-8))
        tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
        tx = zs * torch.clamp(x / zs, -(cx / fx + 0.3 * tan_fovx), (width - cx) / fx + 0.3 * tan_fovx)
        ty = zs * torch.clamp(y / zs, -(cy / fy + 0.3 * tan_fovy), (height - cy) / fy + 0.3 * tan_fovy)
        jac = torch.stack([fx / zs, zeros, -fx * tx / zs ** 2, zeros, fy / zs, -fy * ty / zs ** 2], -1)
        means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    elif camera_model == "ortho":
        ones = torch.ones_like(z)
        jac = torch.stack([fx * ones, zeros, zeros, zeros, fy * ones, zeros], -1)
        means2d = torch.stack([fx * x + cx, fy * y + cy], -1)
    else:
        raise ValueError(f"unknown camera model {camera_model!r}")
    jac = jac.reshape(*jac.shape[:-1], 2, 3)
    cov2d = jac @ cov_cam @ jac.transpose(-1, -2)
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    return means2d, conics, cov2d, z, det


@dataclass
class _TilePlan:
    """Which Gaussians touch which tile, front to back: the (tile, Gaussian) pairs sorted by tile and
    then depth, as one flat list with each tile's start and count (no padding to the busiest tile)."""
    gauss: torch.Tensor  # Gaussian index of each pair, grouped by tile, front to back, padded with N
    start: torch.Tensor  # (tiles,) first pair of each tile (segments padded to a multiple of chunk)
    count: torch.Tensor  # (tiles,) pairs per tile
    origin: torch.Tensor  # (tiles, 2) pixel (x, y) of each tile's top-left corner
    tile_size: int
    chunk: int  # Gaussians per tile per round
    tiles_per_round: int  # tiles processed together: bounds memory by tile size, not image size

    @property
    def n_tiles(self) -> int:
        return self.start.shape[0]


def _tile_plan(means2d, depth, rx, ry, valid, view, n_views, width, height, tile_size, chunk, max_elems):
    """Bin N projected Gaussians (each belonging to ``view``) into the 16x16-style tiles of their view."""
    dev = means2d.device
    ntx, nty = math.ceil(width / tile_size), math.ceil(height / tile_size)
    per_view = ntx * nty
    idx = torch.nonzero(valid).squeeze(1)
    idx = idx[torch.argsort(depth[idx])]  # front to back; the stable sort by tile below keeps this order
    m2, rx, ry = means2d[idx], rx[idx], ry[idx]
    tx0 = torch.floor((m2[:, 0] - rx) / tile_size).clamp(0, ntx - 1).long()
    tx1 = torch.floor((m2[:, 0] + rx) / tile_size).clamp(0, ntx - 1).long()
    ty0 = torch.floor((m2[:, 1] - ry) / tile_size).clamp(0, nty - 1).long()
    ty1 = torch.floor((m2[:, 1] + ry) / tile_size).clamp(0, nty - 1).long()
    nx = tx1 - tx0 + 1
    n = nx * (ty1 - ty0 + 1)  # tiles each Gaussian's box covers
    base = view[idx] * per_view + ty0 * ntx + tx0
    # the pairs: for Gaussian j, tiles base_j + (i // nx_j) * ntx + i % nx_j for i < n_j
    local = torch.arange(int(n.sum()), device=dev) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
    nx_r = torch.repeat_interleave(nx, n)
    tile = torch.repeat_interleave(base, n) + torch.div(local, nx_r, rounding_mode="floor") * ntx + local % nx_r
    key_dtype = torch.int16 if n_views * per_view <= 32767 else torch.int32  # radix sort: narrow keys are faster
    tile, order = torch.sort(tile.to(key_dtype), stable=True)
    tile = tile.long()
    count = torch.bincount(tile, minlength=n_views * per_view)
    chunk = max(1, min(chunk, int(count.max()) if count.numel() else 1))
    # each tile's segment is padded to a multiple of ``chunk`` with the index of a transparent dummy
    # Gaussian (index N), so a round reads whole chunks without masks
    padded = (count + chunk - 1) // chunk * chunk
    start = torch.cumsum(padded, 0) - padded
    dest = torch.arange(tile.numel(), device=dev) + (start - (torch.cumsum(count, 0) - count)).index_select(0, tile)
    gauss = torch.full((int(padded.sum()),), valid.numel(), dtype=torch.long, device=dev)
    gauss.index_copy_(0, dest, torch.repeat_interleave(idx, n).index_select(0, order))
    t = torch.arange(n_views * per_view, device=dev) % per_view
    origin = torch.stack([(t % ntx) * tile_size, (t // ntx) * tile_size], -1).to(means2d.dtype)
    tiles_per_round = max(1, max_elems // (tile_size * tile_size * chunk))
    return _TilePlan(gauss, start, count, origin, tile_size, chunk, tiles_per_round)


def _pixel_basis(tile_size, dtype, device):
    """phi(p) = [1, x, y, x^2, y^2, xy] of each tile pixel centre, relative to the tile centre."""
    c = torch.arange(tile_size, device=device, dtype=torch.float64) + 0.5 - tile_size / 2
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    x, y = xs.reshape(-1), ys.reshape(-1)
    return torch.stack([torch.ones_like(x), x, y, x * x, y * y, x * y], -1).to(dtype)


def _quad_coefs(m, con, op):
    """Coefficients q with q . phi(p) = sigma(p) - log(opacity), so opacity * exp(-sigma) = exp(-q . phi).

    ``m`` is the mean relative to the tile centre: sigma = 1/2 a dx^2 + 1/2 c dy^2 + b dx dy with
    d = m - p. Means are relative to the tile centre so the terms that cancel stay small."""
    mx, my = m[..., 0], m[..., 1]
    a, b, c = con[..., 0], con[..., 1], con[..., 2]
    return torch.stack([0.5 * a * mx * mx + 0.5 * c * my * my + b * mx * my - torch.log(op),
                        -(a * mx + b * my), -(c * my + b * mx), 0.5 * a, 0.5 * c, b], -1)


def _quad_coefs_backward(m, con, op, gq):
    """Gradients of (m, con, op) from the gradient ``gq`` of :func:`_quad_coefs`' output."""
    mx, my = m[..., 0], m[..., 1]
    a, b, c = con[..., 0], con[..., 1], con[..., 2]
    g0, g1, g2, g3, g4, g5 = gq.unbind(-1)
    gm = torch.stack([g0 * (a * mx + b * my) - g1 * a - g2 * b, g0 * (c * my + b * mx) - g1 * b - g2 * c], -1)
    gcon = torch.stack([g0 * 0.5 * mx * mx - g1 * mx + 0.5 * g3, g0 * mx * my - g1 * my - g2 * mx + g5,
                        g0 * 0.5 * my * my - g2 * my + 0.5 * g4], -1)
    return gm, gcon, -g0 / op


def _sweep(plan, m2, con, op, feats, backward=None):
    """Front-to-back compositing of every tile, ``chunk`` Gaussians per tile per round.

    Each Gaussian's exponent over a tile is a quadratic form in the pixel position, so a round
    evaluates opacity * exp(-sigma) for all (pixel, Gaussian) pairs as one batched matmul of the
    pixel basis with per-pair coefficients, then one exp.

    Forward (``backward`` None): returns acc (tiles, P, F) = sum_i w_i f_i and the final transmittance
    (tiles, P), w_i = alpha_i T_i. Backward (``backward`` = (acc, trans, g_acc, g_trans)): replays the
    same rounds and returns the gradients of (m2, con, op, feats). Nothing is kept per round, so memory
    is bounded by tiles_per_round x tile pixels x chunk whatever the image size and Gaussian count.
    The features still to come behind Gaussian i are acc_total - prefix_i, so the backward also runs
    front to back.
    """
    dev, dt = m2.device, m2.dtype
    ts, k = plan.tile_size, plan.chunk
    phi = _pixel_basis(ts, dt, dev)  # (P, 6)
    P, F = phi.shape[0], feats.shape[1]
    acc = torch.zeros(plan.n_tiles, P, F, dtype=dt, device=dev)
    trans = torch.ones(plan.n_tiles, P, dtype=dt, device=dev)
    bwd = backward is not None
    if bwd:
        acc_total, trans_final, g_acc, g_trans = backward
        grads = [torch.zeros(t.shape[0] + 1, *t.shape[1:], dtype=dt, device=dev) for t in (m2, con, op, feats)]
    arange_k = torch.arange(k, device=dev)
    centre = plan.origin + ts / 2
    busy = torch.nonzero(plan.count > 0).squeeze(1)
    busy = busy[torch.argsort(plan.count[busy], descending=True)]  # rows still busy in a round = a prefix
    packed = torch.cat([m2, con, op[:, None], feats], -1)
    dummy = torch.zeros(1, packed.shape[1], dtype=dt, device=dev)
    dummy[0, 5] = 1e-30  # opacity: alpha = 1e-30 < 1/255, never composited
    packed = torch.cat([packed, dummy])
    alpha_min = torch.nextafter(torch.tensor(ALPHA_MIN, dtype=dt), torch.tensor(0.0, dtype=dt)).item()
    for g0 in range(0, busy.numel(), plan.tiles_per_round):
        active = busy[g0:g0 + plan.tiles_per_round]
        t_cur, a_cur = trans[active], acc[active]
        done = torch.zeros_like(t_cur, dtype=torch.bool)
        if bwd:
            g_a = g_acc[active]
            g_rest = (g_a * acc_total[active]).sum(-1)  # G . (features still to come), updated per round
            g_t = g_trans[active] * trans_final[active]
        cnt = plan.count[active]  # descending
        for r0 in range(0, int(cnt[0]), k):
            n = int((cnt > r0).sum())
            alive = ~done[:n].all(1)
            if bool(alive.all()):
                sel = slice(0, n)  # a view: no gathers
            else:
                sel = torch.nonzero(alive).squeeze(1)
                if sel.numel() == 0:
                    break
            tiles = active[sel]
            t_sel, d_sel, a_sel = t_cur[sel], done[sel], a_cur[sel]
            gi = torch.take(plan.gauss, plan.start[tiles][:, None] + r0 + arange_k)  # (Ta, k)
            pk = packed.index_select(0, gi.reshape(-1)).view(*gi.shape, -1)  # mean, conic, opacity, features
            rel, cn, o, fg = pk[..., 0:2] - centre[tiles][:, None], pk[..., 2:5], pk[..., 5], pk[..., 6:]
            q = _quad_coefs(rel, cn, o)
            raw = torch.exp_(phi @ -q.transpose(1, 2))  # (Ta, P, k) = opacity * exp(-sigma)
            alpha = torch.nn.functional.threshold(raw, alpha_min, 0.0).clamp_(max=ALPHA_MAX)  # < 1/255: skipped
            one_minus = 1.0 - alpha
            t0 = t_sel.masked_fill(d_sel, 0.0)  # done pixels take nothing more
            t_incl = torch.cumprod(one_minus, dim=-1).mul_(t0[..., None])
            t_excl = t_incl / one_minus
            last = t_incl[..., -1]
            stopped = (last <= T_MIN) & ~d_sel
            any_stopped = bool(stopped.any())
            # a pixel stops before the Gaussian that would drop its transmittance to 1e-4
            live = t_incl > T_MIN if any_stopped else None
            w = alpha * t_excl
            if any_stopped:
                w.mul_(live)
            if bwd:
                G = g_a[sel]
                gf = G @ fg.transpose(1, 2)  # (Ta, P, k): G . f_i
                rest = g_rest[sel][..., None] - torch.cumsum(w * gf, dim=-1)  # G . (features behind i)
                d_alpha = t_excl * gf - (rest + g_t[sel][..., None]) / one_minus
                # only the pairs that were composited (a done pixel has t_incl = 0, so not live)
                d_raw = d_alpha * ((alpha > 0) & (alpha < ALPHA_MAX) & (t_incl > T_MIN))
                gq = -(d_raw * raw).transpose(1, 2) @ phi  # (Ta, k, 6)
                gm, gcon, gop = _quad_coefs_backward(rel, cn, o, gq)
                flat = gi.reshape(-1)
                for j, g in enumerate((gm, gcon, gop, w.transpose(1, 2) @ G)):
                    grads[j].index_add_(0, flat, g.reshape(flat.numel(), *g.shape[2:]))
                g_rest[sel] = rest[..., -1]
            a_cur[sel] = a_sel + w @ fg
            t_new = torch.where(d_sel, t_sel, last)
            if any_stopped:  # transmittance after the last Gaussian the pixel took
                kept = torch.where(live[stopped], t_incl[stopped], torch.full_like(t_incl[stopped], float("inf")))
                t_new[stopped] = torch.minimum(kept.min(-1).values, t_sel[stopped])
            t_cur[sel] = t_new
            done[sel] = d_sel | stopped
        trans[active], acc[active] = t_cur, a_cur
    return (acc, trans) if not bwd else tuple(g[:-1] for g in grads)  # the dummy's row dropped


class _Composite(torch.autograd.Function):
    """Tile compositing with a hand-written backward that replays the forward round by round (like
    gsplat's), so the backward holds no per-pair activations."""

    @staticmethod
    def forward(ctx, m2, con, op, feats, plan):
        acc, trans = _sweep(plan, m2, con, op, feats)
        ctx.plan = plan
        ctx.save_for_backward(m2, con, op, feats, acc, trans)
        return acc, trans

    @staticmethod
    def backward(ctx, g_acc, g_trans):
        m2, con, op, feats, acc, trans = ctx.saved_tensors
        g_acc = torch.zeros_like(acc) if g_acc is None else g_acc
        g_trans = torch.zeros_like(trans) if g_trans is None else g_trans
        grads = _sweep(ctx.plan, m2, con, op, feats, backward=(acc, trans, g_acc, g_trans))
        return (*grads, None)


PAIR_COST = 6.0  # plan cost of one (tile, Gaussian) pair in units of one pixel evaluation (measured, 2 cores)


def pick_tile_size(rx: torch.Tensor, ry: torch.Tensor, valid: torch.Tensor, sizes=(4, 8, 16)) -> int:
    """The tile size with the least estimated work for these screen-space boxes: pixel evaluations
    (2 rx + t)(2 ry + t) plus PAIR_COST per (tile, Gaussian) pair. Small splats -> 4, large -> 8 or 16."""
    rx, ry = rx[valid].double(), ry[valid].double()
    if rx.numel() == 0:
        return sizes[0]
    cost = [float(((2 * rx + t) * (2 * ry + t)).sum() + PAIR_COST * ((2 * rx / t + 1) * (2 * ry / t + 1)).sum())
            for t in sizes]
    return sizes[min(range(len(sizes)), key=cost.__getitem__)]


def rasterize_torch(g: Gaussians, cams: list[Cameras], background, near_plane=NEAR_PLANE, far_plane=FAR_PLANE,
                    tile_size: int | str = "auto", chunk: int = 32, eps2d: float = EPS2D,
                    max_elems: int = 1 << 21, max_pairs: int = 1 << 23) -> RenderOutput:
    """Pure-torch rasterizer. ``cams``: one Cameras per object (same count, size and camera model).

    Every object x camera is one "view"; views are binned and composited together (Python loops run
    over rounds of ``chunk`` Gaussians, not over views or tiles), in groups of views of at most
    ``max_pairs`` (tile, Gaussian) pairs. ``max_elems`` bounds the pixels x Gaussians evaluated at
    once (and so the memory of forward and backward). ``tile_size``: 1..16 or "auto"
    (:func:`pick_tile_size`).
    """
    models = {c.model for c in cams}
    if len(models) != 1:
        raise ValueError(f"one camera model per render call, got {sorted(models)}")
    if tile_size != "auto" and not (isinstance(tile_size, int) and 1 <= tile_size <= 16):
        raise ValueError(f"tile_size must be 1..16 or 'auto' (float32 exponents are exact to ~4e-6 up to 16), "
                         f"got {tile_size!r}")
    B, C, N = g.batch_size, len(cams[0]), g.means.shape[1]
    W, H = cams[0].width, cams[0].height
    viewmats = torch.stack([c.viewmats for c in cams]).to(g.means)  # (B, C, 4, 4)
    Ks = torch.stack([c.K for c in cams]).to(g.means)
    means2d, conics, cov2d, depth, det = project_gaussians(
        g.means[:, None], g.quats[:, None], g.scales[:, None], viewmats, Ks, W, H, models.pop(), eps2d)
    op = g.opacities[:, None].expand(B, C, N)
    extent = torch.sqrt(2.0 * torch.log((op.detach() / ALPHA_MIN).clamp_min(1.0)))
    rx = extent * cov2d[..., 0, 0].detach().clamp_min(0).sqrt() + 1
    ry = extent * cov2d[..., 1, 1].detach().clamp_min(0).sqrt() + 1
    m2d = means2d.detach()
    valid = (depth > near_plane) & (depth < far_plane) & (det > 0) & (op >= ALPHA_MIN)
    valid = (valid & (m2d[..., 0] + rx > 0) & (m2d[..., 0] - rx < W) & (m2d[..., 1] + ry > 0)
             & (m2d[..., 1] - ry < H)).detach()
    ts = pick_tile_size(rx, ry, valid) if tile_size == "auto" else tile_size
    V = B * C
    ntx, nty = math.ceil(W / ts), math.ceil(H / ts)
    # pairs per view (upper bound: boxes before clipping to the image), to split the views into groups
    pairs = torch.where(valid, (2 * rx / ts + 2).floor() * (2 * ry / ts + 2).floor(), torch.zeros_like(rx))
    pairs = pairs.reshape(V, N).sum(1).tolist()
    groups, cur, size = [], [], 0.0
    for v, n in enumerate(pairs):
        if cur and size + n > max_pairs:
            groups.append(cur)
            cur, size = [], 0.0
        cur.append(v)
        size += n
    groups.append(cur)
    m2f, conf, opf = means2d.reshape(V, N, 2), conics.reshape(V, N, 3), op.reshape(V, N)
    feats = torch.cat([g.colors[:, None].expand(B, C, N, 3), depth[..., None]], -1).reshape(V, N, 4)
    dep, rxf, ryf, valf = depth.detach().reshape(V, N), rx.reshape(V, N), ry.reshape(V, N), valid.reshape(V, N)
    accs, transs = [], []
    for grp in groups:
        sl = slice(grp[0], grp[-1] + 1)
        nv = len(grp)
        view = torch.arange(nv, device=g.means.device).repeat_interleave(N)
        plan = _tile_plan(m2d.reshape(V, N, 2)[sl].reshape(-1, 2), dep[sl].reshape(-1), rxf[sl].reshape(-1),
                          ryf[sl].reshape(-1), valf[sl].reshape(-1), view, nv, W, H, ts, chunk, max_elems)
        acc, trans = _Composite.apply(m2f[sl].reshape(-1, 2), conf[sl].reshape(-1, 3), opf[sl].reshape(-1),
                                      feats[sl].reshape(-1, 4), plan)
        accs.append(acc)
        transs.append(trans)
    acc, trans = torch.cat(accs), torch.cat(transs)

    def image(t, ch):  # (V * tiles, P, ch) -> (B, C, ch, H, W)
        t = t.reshape(B, C, nty, ntx, ts, ts, ch).permute(0, 1, 6, 2, 4, 3, 5)
        return t.reshape(B, C, ch, nty * ts, ntx * ts)[..., :H, :W]

    acc_img = image(acc, 4)
    alpha = 1 - image(trans[..., None], 1)
    rgb = acc_img[:, :, :3] + (1 - alpha) * background.view(3, 1, 1)
    d = acc_img[:, :, 3:]
    depth_img = torch.where(alpha > 0, d / alpha.clamp_min(1e-10), torch.zeros_like(d))
    return RenderOutput(rgb, alpha, depth_img)


#: the first gsplat whose ``rasterization`` takes leading batch dimensions (``means [..., N, 3]``, ``viewmats
#: [..., C, 4, 4]``, the ``batch_dims`` code path): 1.5.3. Checked in the released wheels: 1.4.0, 1.5.0,
#: 1.5.1 and 1.5.2 document ``means [N, 3]`` (one scene) and have no batch_dims, so the batched call fails there
GSPLAT_MIN_VERSION = "1.5.3"


def check_gsplat_batched(rasterization) -> None:
    """Refuse a gsplat whose ``rasterization`` lacks batch dimensions, naming the version to install.
    Its documented shapes are what changed between 1.4 and 1.5 (the parameter names did not)."""
    doc = " ".join((rasterization.__doc__ or "").split())
    if "[..., N, 3]" not in doc:
        raise ImportError(f"this gsplat's rasterization() takes no batch dimensions (means [N, 3]); the renderer "
                          f"needs gsplat >= {GSPLAT_MIN_VERSION}: pip install 'gsplat>={GSPLAT_MIN_VERSION}'")


def rasterize_gsplat(g: Gaussians, cams: list[Cameras], background, near_plane=NEAR_PLANE, far_plane=FAR_PLANE,
                     eps2d: float = EPS2D) -> RenderOutput:
    """All objects x cameras in one gsplat call (batched leading dimension, no Python loop over views)."""
    try:
        from gsplat import rasterization
    except ImportError as e:
        raise ImportError("the CUDA renderer needs gsplat: pip install 'mvboost[gpu]'") from e
    check_gsplat_batched(rasterization)
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
