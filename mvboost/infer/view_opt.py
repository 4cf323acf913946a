"""Input-view optimisation (MVBoost §3.4): fit the reconstructed Gaussians to the input image.

The paper gives two steps and leaves the details open; ours, all configurable (``ViewOptConfig``):

1. **Pose search** (Eq. 7): the pose pi minimising LPIPS(g(theta*, pi), c) between the render of the
   Gaussians and the input view. Search space: azimuth, elevation and scale (magnification) of the
   input camera around Era3D's front view (orthographic, world width 1.370, the framing Era3D's
   condition image has), or LGM's pinhole camera (``camera: pinhole``, scale = distance ratio). A coarse
   grid (all candidates rendered and scored as one batch), then a pattern search that halves its step
   (azimuth/elevation in degrees, scale in 1/100 of the degree step) down to ``refine_min_deg``, kept
   within the grid's range widened by ``refine_deg`` (scale: by 20 %) and ``max_poses`` scored poses.
   The image-plane offset is not searched: both the input and Era3D's views are recentred on the
   object's bounding box.
2. **Gaussian residual W** (Eq. 8-9): theta_up = theta* + W, minimising LPIPS(g(theta_up, pi_opt), c)
   over W with Adam. W covers ``attributes`` (colours additively, clamped to [0, 1]; opacities in logit
   space; means additively with their own small learning rate; scales in log space). Only the input
   view's render drives W, so Gaussians the input camera cannot see keep W = 0; to keep the *other*
   sides intact where they share Gaussians with the input view we add ``keep_weight`` x MSE between the
   renders of theta_up and theta* at ``keep_azimuths`` (relative to the found pose). The report gives
   the input view's LPIPS before/after and the change at *held-out* views that the regulariser does
   not see (``held_out_azimuths``, elevation ``held_out_elevation``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..gaussians import Gaussians
from ..geometry.cameras import (
    ERA3D_ORTHO_WORLD_WIDTH,
    LGM_CAM_RADIUS,
    ORTHO_CAM_RADIUS,
    Cameras,
    orbit_camera,
    ortho_intrinsics,
    pinhole_intrinsics,
)
from ..render import render

ATTRIBUTES = ("colors", "opacities", "means", "scales")


@dataclass
class ViewOptConfig:
    camera: str = "ortho"  # the input view's camera: ortho (Era3D's front view) or pinhole (LGM's, r 1.5)
    resolution: int = 128  # pose search and W optimisation
    lpips_net: str = "vgg"
    azimuths: list[float] = field(default_factory=lambda: [-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0])
    elevations: list[float] = field(default_factory=lambda: [-20.0, -10.0, 0.0, 10.0, 20.0])  # < 0: above
    scales: list[float] = field(default_factory=lambda: [0.85, 1.0, 1.15])
    refine_deg: float = 5.0  # first pattern-search step; halved down to ``refine_min_deg``
    refine_min_deg: float = 0.5
    max_poses: int = 400  # cap on poses scored (grid + pattern search)
    attributes: list[str] = field(default_factory=lambda: ["colors", "opacities", "means"])
    steps: int = 100
    lr: float = 0.02  # colours, opacity logits, log-scales
    lr_means: float = 0.001  # world units
    keep_weight: float = 1.0
    keep_azimuths: list[float] = field(default_factory=lambda: [90.0, 180.0, 270.0])
    keep_resolution: int = 64
    held_out_azimuths: list[float] = field(default_factory=lambda: [135.0, 225.0])
    held_out_elevation: float = -30.0

    def check(self) -> None:
        if self.camera not in ("ortho", "pinhole"):
            raise ValueError(f"view_opt.camera must be 'ortho' or 'pinhole', got {self.camera!r}")
        bad = [a for a in self.attributes if a not in ATTRIBUTES]
        if bad:
            raise ValueError(f"view_opt.attributes: unknown {bad}; choose from {list(ATTRIBUTES)}")
        if self.resolution < 16 or self.keep_resolution < 16:
            raise ValueError("view_opt.resolution and keep_resolution must be >= 16")


@dataclass(frozen=True)
class Pose:
    azimuth: float = 0.0  # degrees, kiui orbit convention (0 = front, +Z)
    elevation: float = 0.0  # degrees, negative = camera above the object
    scale: float = 1.0  # magnification relative to the canonical framing

    def as_dict(self) -> dict:
        return {"azimuth_deg": round(self.azimuth, 4), "elevation_deg": round(self.elevation, 4),
                "scale": round(self.scale, 5)}


def pose_cameras(poses: list[Pose], size: int, camera: str = "ortho") -> Cameras:
    """One camera per pose, as a batch: orthographic (world width 1.370 / scale) or pinhole (r 1.5 / scale)."""
    el = [p.elevation for p in poses]
    az = [p.azimuth for p in poses]
    if camera == "ortho":
        c2w = orbit_camera(el, az, ORTHO_CAM_RADIUS)
        K = torch.stack([ortho_intrinsics(size, size, ERA3D_ORTHO_WORLD_WIDTH / p.scale) for p in poses])
    else:
        c2w = torch.stack([orbit_camera(p.elevation, p.azimuth, LGM_CAM_RADIUS / p.scale) for p in poses])
        K = pinhole_intrinsics(size, size)
    return Cameras(c2w, K, size, size, camera)


def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """(3,H,W) or (B,3,H,W) in [0,1] -> size x size (area downsampling, bilinear upsampling)."""
    x = img if img.ndim == 4 else img[None]
    if x.shape[-1] != size or x.shape[-2] != size:
        mode = "area" if x.shape[-1] > size else "bilinear"
        x = F.interpolate(x, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return x if img.ndim == 4 else x[0]


class _Scorer:
    """LPIPS of renders of one object's Gaussians against one target image, batched over poses."""

    def __init__(self, g: Gaussians, target: torch.Tensor, lpips, cfg: ViewOptConfig, batch: int = 32):
        self.g, self.lpips, self.cfg, self.batch = g, lpips, cfg, batch
        self.target = _resize(target, cfg.resolution).to(g.means)[None] * 2 - 1

    @torch.no_grad()
    def __call__(self, poses: list[Pose]) -> torch.Tensor:
        out = []
        for i in range(0, len(poses), self.batch):
            cams = pose_cameras(poses[i:i + self.batch], self.cfg.resolution, self.cfg.camera).to(self.g.means.device)
            rgb = render(self.g, cams).rgb[0] * 2 - 1
            out.append(self.lpips(rgb, self.target.expand_as(rgb)).flatten())
        return torch.cat(out).cpu()


def search_pose(g: Gaussians, target: torch.Tensor, lpips, cfg: ViewOptConfig,
                score: _Scorer | None = None) -> tuple[Pose, float, int]:
    """Coarse grid, then pattern search. Returns (best pose, its LPIPS, poses evaluated)."""
    score = score or _Scorer(g, target, lpips, cfg)
    grid = [Pose(a, e, s) for a in cfg.azimuths for e in cfg.elevations for s in cfg.scales]
    values = score(grid)
    best_i = int(values.argmin())
    best, best_v, evaluated = grid[best_i], float(values[best_i]), len(grid)
    step = cfg.refine_deg
    az_lo, az_hi = min(cfg.azimuths) - cfg.refine_deg, max(cfg.azimuths) + cfg.refine_deg
    el_lo, el_hi = min(cfg.elevations) - cfg.refine_deg, max(cfg.elevations) + cfg.refine_deg
    sc_lo, sc_hi = min(cfg.scales) / 1.2, max(cfg.scales) * 1.2
    while step >= cfg.refine_min_deg and evaluated < cfg.max_poses:
        ds = step / 100.0
        cand = [Pose(best.azimuth + da, best.elevation + de, best.scale * (1 + dsc))
                for da, de, dsc in ((step, 0, 0), (-step, 0, 0), (0, step, 0), (0, -step, 0), (0, 0, ds), (0, 0, -ds))]
        cand = [p for p in cand if az_lo <= p.azimuth <= az_hi and el_lo <= p.elevation <= el_hi
                and sc_lo <= p.scale <= sc_hi]
        if not cand:
            step /= 2
            continue
        values = score(cand)
        evaluated += len(cand)
        i = int(values.argmin())
        if float(values[i]) < best_v:
            best, best_v = cand[i], float(values[i])
        else:
            step /= 2
    return best, best_v, evaluated


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-5, 1 - 1e-5)
    return torch.log(p) - torch.log1p(-p)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 99.0 if mse <= 1e-10 else -10 * math.log10(mse)


def fit_residual(g: Gaussians, target: torch.Tensor, pose: Pose, lpips, cfg: ViewOptConfig):
    """theta_up = theta* + W, W fitted to the input view (Eq. 8-9). Returns (theta_up, losses per step)."""
    dev = g.means.device
    cam = pose_cameras([pose], cfg.resolution, cfg.camera).to(dev)
    keep = pose_cameras([Pose(pose.azimuth + a, pose.elevation, pose.scale) for a in cfg.keep_azimuths],
                        cfg.keep_resolution, cfg.camera).to(dev)
    tgt = _resize(target, cfg.resolution).to(g.means)[None] * 2 - 1
    base = g.to(torch.float32)
    with torch.no_grad():
        keep_ref = render(base, keep).rgb if cfg.keep_weight > 0 and len(keep) else None
    w = {a: torch.zeros_like(getattr(base, a), requires_grad=True) for a in cfg.attributes}
    groups = [{"params": [w[a]], "lr": cfg.lr_means if a == "means" else cfg.lr} for a in w]
    opt = torch.optim.Adam(groups)
    logit_op, log_scales = _logit(base.opacities), torch.log(base.scales.clamp_min(1e-8))

    def apply() -> Gaussians:
        return Gaussians(
            base.means + w["means"] if "means" in w else base.means,
            torch.sigmoid(logit_op + w["opacities"]) if "opacities" in w else base.opacities,
            torch.exp(log_scales + w["scales"]) if "scales" in w else base.scales,
            base.quats,
            (base.colors + w["colors"]).clamp(0, 1) if "colors" in w else base.colors,
        )

    losses = []
    for _ in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        up = apply()
        loss = lpips(render(up, cam).rgb[0] * 2 - 1, tgt).mean()
        if keep_ref is not None:
            loss = loss + cfg.keep_weight * F.mse_loss(render(up, keep).rgb, keep_ref)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        return apply(), losses


@dataclass
class ViewOptResult:
    gaussians: Gaussians  # theta_up (float32)
    pose: Pose
    lpips_canonical: float  # theta* at the canonical pose (az 0, el 0, scale 1)
    lpips_pose: float  # theta* at the found pose
    lpips_after: float  # theta_up at the found pose
    held_out_psnr: float  # theta_up vs theta* at the held-out views (higher = less changed)
    poses_evaluated: int
    steps: int

    def report(self) -> dict:
        return {"pose": self.pose.as_dict(), "lpips_input_canonical_pose": round(self.lpips_canonical, 5),
                "lpips_input_found_pose": round(self.lpips_pose, 5), "lpips_input_after": round(self.lpips_after, 5),
                "held_out_views_psnr_db": round(self.held_out_psnr, 2), "poses_evaluated": self.poses_evaluated,
                "steps": self.steps}


def optimize_input_view(g: Gaussians, target: torch.Tensor, cfg: ViewOptConfig | None = None,
                        lpips=None) -> ViewOptResult:
    """Both steps for one object. ``g``: one object's Gaussians; ``target``: (3,H,W) input view in [0,1]
    on white, framed like Era3D's condition image. ``lpips``: a loaded LPIPS module (loaded if None)."""
    cfg = cfg or ViewOptConfig()
    cfg.check()
    if g.batch_size != 1:
        raise ValueError(f"optimize_input_view takes one object, got {g.batch_size}")
    g = g.to(torch.float32)
    if lpips is None:
        from ..metrics.lpips import load_lpips

        lpips = load_lpips(cfg.lpips_net, device=g.means.device)
    target = target.to(g.means)
    score = _Scorer(g, target, lpips, cfg)
    canonical = float(score([Pose()])[0])
    pose, lp_pose, evaluated = search_pose(g, target, lpips, cfg, score)
    up, _ = fit_residual(g, target, pose, lpips, cfg)
    after = float(_Scorer(up, target, lpips, cfg)([pose])[0])
    held = pose_cameras([Pose(pose.azimuth + a, cfg.held_out_elevation, pose.scale) for a in cfg.held_out_azimuths],
                        cfg.keep_resolution, cfg.camera).to(g.means.device)
    with torch.no_grad():
        held_psnr = _psnr(render(up, held).rgb, render(g, held).rgb)
    return ViewOptResult(up, pose, canonical, lp_pose, after, held_psnr, evaluated, cfg.steps)
