"""Scoring Gaussians against one GSO object: ``evaluate_object(gaussians, object, protocol) -> dict``.

Every metric of the protocol, twice: ``canonical`` (the prediction normalised, no search) and
``aligned`` (after the yaw/axis search and ICP, the same transform used for the 2D renders). 2D: PSNR,
SSIM, LPIPS (vgg, alex) per view, averaged over all views ("all", 21) and without the input view
("novel", 20). 3D: CD (and its sum/squared variants), F-score at each tau and F_sq@0.05 on surface
samples of the GT mesh and of the mesh extracted from the Gaussians (metric space, [-1, 1]^3).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..assets.gso import METRIC_SCALE, GSOObject, load_object
from ..assets.render import RENDERER, MeshRenderer
from ..gaussians import Gaussians
from ..io.codec import to_uint8
from ..metrics.geometry import chamfer_fscore, gaussians_to_mesh, psnr, sample_surface, ssim
from . import align as al
from .gt import eval_cameras, predicted_views, supersampled
from .protocol import Protocol


@dataclass
class GroundTruth:
    obj: GSOObject
    rgb: np.ndarray  # (V, H, W, 3) orbit views on white
    alpha: np.ndarray  # (V, H, W, 1)
    input_rgba: np.ndarray  # (H, W, 4) uint8: the input view (elevation 0, azimuth 0)
    points: np.ndarray  # (n, 3) metric space, seed
    noise_floor_cd: float  # CD between two independent samplings of the GT surface
    seconds: float


def prepare_gt(obj: GSOObject, protocol: Protocol, renderer: MeshRenderer | None = None) -> GroundTruth:
    t = time.perf_counter()
    renderer = renderer or MeshRenderer()
    rgb, alpha = renderer.render(obj, eval_cameras(protocol), protocol.supersample)
    i = protocol.input_index()
    input_rgba = to_uint8(np.concatenate([rgb[i], alpha[i]], -1))
    pts = obj.surface_points(protocol.points, protocol.seed)
    floor = chamfer_fscore(obj.surface_points(protocol.points, protocol.seed + 1), pts)["cd"]
    return GroundTruth(obj, rgb, alpha, input_rgba, pts, floor, time.perf_counter() - t)


class LPIPSSet:
    """The protocol's LPIPS networks (real ImageNet backbones), loaded once."""

    def __init__(self, nets, device="cpu"):
        from ..metrics.lpips import load_lpips

        self.device = torch.device(device)
        self.nets = {n: load_lpips(n, device=self.device) for n in nets}

    @torch.no_grad()
    def __call__(self, pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
        a = torch.from_numpy(np.ascontiguousarray(pred)).permute(0, 3, 1, 2).float().to(self.device) * 2 - 1
        b = torch.from_numpy(np.ascontiguousarray(gt)).permute(0, 3, 1, 2).float().to(self.device) * 2 - 1
        return {n: torch.cat([net(a[i:i + 8], b[i:i + 8]).flatten() for i in range(0, len(a), 8)]).cpu().numpy()
                for n, net in self.nets.items()}


def image_metrics(pred: np.ndarray, gt: np.ndarray, lpips: LPIPSSet, input_index: int) -> dict:
    per_view = {"psnr": np.array([min(psnr(p, g), 100.0) for p, g in zip(pred, gt)]),
                "ssim": np.array([ssim(p, g) for p, g in zip(pred, gt)])}
    per_view.update({f"lpips_{n}": v for n, v in lpips(pred, gt).items()})
    novel = [i for i in range(len(pred)) if i != input_index]
    out = {}
    for k, v in per_view.items():
        out[k] = {"all": float(v.mean()), "novel": float(v[novel].mean()), "per_view": [round(float(x), 5) for x in v]}
    return out


#: the density grid spans the normalised object's cube ([-0.5, 0.5]^3 in render space = [-1, 1]^3 metric)
#: plus this margin on each side (splat tails reach past the means the coarse normalisation used), with
#: the voxel size of ``mesh_resolution`` voxels across the cube
MESH_MARGIN = 0.05


def _opaque_means(g: Gaussians) -> np.ndarray:
    m = g.means[0].detach().cpu().double().numpy()
    keep = g.opacities[0].detach().cpu().numpy() > 0.1
    return m[keep] if keep.any() else m


def _mesh(g0: Gaussians, protocol: Protocol):
    """(vertices, faces) of the density iso-surface of Gaussians already normalised to render space, on a
    grid over the metric cube at ``mesh_resolution`` voxels across it; a reason string if there is none."""
    bound = 0.5 + MESH_MARGIN
    resolution = int(round(protocol.mesh_resolution * 2 * bound)) + 1
    try:
        return gaussians_to_mesh(g0.to("cpu"), resolution=resolution, level=protocol.mesh_level, bound=bound)
    except ValueError as e:
        return f"no mesh: the Gaussians' density never reaches the iso-level ({e})"


def _geometry(pts: np.ndarray, gt: GroundTruth, protocol: Protocol) -> dict:
    return chamfer_fscore(pts, gt.points, taus=tuple(protocol.taus))


def not_available(reason: str) -> dict:
    """A metric variant that could not be computed for this object (counted as a failure, never dropped)."""
    return {"status": "n/a", "reason": reason}


def _align(pts: np.ndarray, verts: np.ndarray, gt: GroundTruth, protocol: Protocol) -> tuple[np.ndarray, dict]:
    """Metric-space similarity taking the canonical prediction onto the GT, independent of the pose the
    prediction came in: (1) centroid to the GT's centroid, RMS radius to the GT's (rotation-invariant),
    (2) yaw/axis search + rigid ICP about the GT's centroid, (3) rescaled like the GT (the bbox of the mesh
    vertices ``verts``: longest side 2) now that it is in the GT's orientation, about the GT's centroid.
    ``pts`` are surface samples and ``verts`` the mesh vertices, both canonical, metric space."""
    c_p, c_g = pts.mean(0), gt.points.mean(0)
    scale = np.sqrt(((gt.points - c_g) ** 2).sum(1).mean() / max(((pts - c_p) ** 2).sum(1).mean(), 1e-18))
    pre = al.similarity(scale, trans=-c_p * scale)
    found = al.align(al.apply(pre, pts), gt.points - c_g, protocol.yaw_step_deg, protocol.axis_permutations,
                     protocol.align_points, protocol.icp_points, protocol.icp_iterations, protocol.seed)
    placed = al.similarity(trans=c_g) @ found["matrix"] @ pre
    # the GT's convention, longest bbox side 2, as a scale about the registered centroid (the bbox's centre
    # moves with the voxels at its extremes; ICP's placement does not)
    ext = np.ptp(al.apply(placed, verts), axis=0).max()
    rescale = METRIC_SCALE / max(float(ext), 1e-9)
    final = al.similarity(trans=c_g) @ al.similarity(rescale) @ al.similarity(trans=-c_g) @ placed
    return final, found


class _GaussianPrediction:
    """Gaussians as a prediction: normalised by their opaque centres, then by their mesh; rendered transformed."""

    def __init__(self, gaussians: Gaussians):
        self.g = gaussians[0:1].to(torch.float32) if gaussians.batch_size > 1 else gaussians.to(torch.float32)
        self.info = {"gaussians": int(self.g.means.shape[1])}

    def normalise_and_mesh(self, protocol: Protocol):
        """(normalisation 4x4 to render space, (vertices, faces) in render space or the reason there is none)."""
        coarse = al.normalisation(_opaque_means(self.g))  # render space from the splat centres, then the mesh
        mesh = _mesh(self.g.transform(coarse), protocol)
        if isinstance(mesh, str):
            return coarse, mesh
        by_mesh = al.normalisation(mesh[0])
        return by_mesh @ coarse, (al.apply(by_mesh, mesh[0]), mesh[1])

    def views(self, m: np.ndarray, cams, supersample: int) -> np.ndarray:
        return predicted_views(self.g.transform(m), cams, supersample)[0]


class _ReconstructionPrediction:
    """Any :class:`mvboost.infer.recon.Reconstruction` (e.g. OpenLRM's triplanes): normalised by its own mesh,
    rendered at the cameras moved by the inverse transform (the same image as the transformed object's)."""

    def __init__(self, recon):
        self.recon = recon
        self.info = {"representation": type(recon).__name__}

    def normalise_and_mesh(self, protocol: Protocol):
        try:
            mesh = self.recon.mesh(protocol.mesh_resolution)
        except ValueError as e:
            return np.eye(4), f"no mesh: {e}"
        verts = np.asarray(mesh.vertices, np.float64)
        norm = al.normalisation(verts)
        return norm, (al.apply(norm, verts), np.asarray(mesh.faces))

    def views(self, m: np.ndarray, cams, supersample: int) -> np.ndarray:
        from ..assets.render import downsample
        from ..geometry.cameras import similarity_view

        big = supersampled(cams, supersample)
        big.c2w = similarity_view(big.c2w, torch.as_tensor(m))
        return downsample(self.recon.render(big)[0], supersample)


def evaluate_object(prediction, obj, protocol: Protocol | None = None, *, gt: GroundTruth | None = None,
                    lpips: LPIPSSet | None = None, return_views: bool = False, canonical: bool = True):
    """Score one object's prediction (Gaussians in render space, LGM's frame = ours, or any
    :class:`~mvboost.infer.recon.Reconstruction` in our frame) against a GSO object.

    ``obj``: a GSO object folder (path), a loaded :class:`GSOObject`, or pass ``gt`` (prepared once and
    reused for several models). Returns the per-object record (JSON-ready); with ``return_views`` also
    ``{"canonical": rgb, "aligned": rgb, "gt": rgb}`` (V, H, W, 3) for reports. A variant that cannot be
    computed (no mesh, alignment off, ``canonical=False`` for inputs without a camera) is recorded as
    ``{"status": "n/a", "reason": …}``; a missing mesh also leaves the canonical ``cd`` None.
    """
    protocol = protocol or Protocol()
    protocol.check()
    t0 = time.perf_counter()
    if gt is None:
        if isinstance(obj, (str, Path)):
            obj = load_object(str(Path(obj).parent), Path(obj).name)
        gt = prepare_gt(obj, protocol)
    lpips = lpips or LPIPSSet(protocol.lpips_nets)
    pred = (_GaussianPrediction(prediction) if isinstance(prediction, Gaussians)
            else _ReconstructionPrediction(prediction))
    norm, mesh = pred.normalise_and_mesh(protocol)
    no_mesh = mesh if isinstance(mesh, str) else None  # the reason there is none
    pts = verts_n = None
    if no_mesh is None:
        verts_n = mesh[0]
        pts = sample_surface(verts_n * METRIC_SCALE, mesh[1], protocol.points, protocol.seed)
    cams = eval_cameras(protocol)
    views = {"gt": gt.rgb}
    record = {"object": gt.obj.name, "renderer": RENDERER, "protocol": asdict(protocol), **pred.info,
              "normalisation": norm.round(8).tolist(), "noise_floor_cd": gt.noise_floor_cd, "frame_warning": None}
    if no_mesh:
        record["mesh"] = no_mesh
    t = time.perf_counter()
    rgb_c = pred.views(norm, cams, protocol.supersample)
    views["canonical"] = rgb_c
    if canonical:
        record["canonical"] = {**image_metrics(rgb_c, gt.rgb, lpips, protocol.input_index()),
                               **(_geometry(pts, gt, protocol) if pts is not None else {"cd": None, "mesh": no_mesh})}
    else:
        record["canonical"] = not_available("the input has no camera (thumbnail): only aligned metrics apply")
    seconds = {"canonical": time.perf_counter() - t}
    if protocol.align and pts is not None:
        t = time.perf_counter()
        final, found = _align(pts, verts_n * METRIC_SCALE, gt, protocol)
        m_render = al.metric_to_render(final)
        rgb_a = pred.views(m_render @ norm, cams, protocol.supersample)
        views["aligned"] = rgb_a
        record["aligned"] = {**image_metrics(rgb_a, gt.rgb, lpips, protocol.input_index()),
                             **_geometry(al.apply(final, pts), gt, protocol),
                             "transform_render_space": m_render.round(8).tolist(),
                             "search": {k: v for k, v in found.items() if k != "matrix"}}
        if not found["pure_yaw"]:
            record["frame_warning"] = (f"the best alignment needed an axis permutation {found['axis_permutation']} "
                                       "besides the yaw: the prediction's frame convention differs from the GT's")
        seconds["aligned"] = time.perf_counter() - t
    else:
        record["aligned"] = not_available("alignment off (protocol.align=false)" if not protocol.align else no_mesh)
        views["aligned"] = rgb_c
    seconds["total"] = time.perf_counter() - t0
    record["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    return (record, views) if return_views else record
