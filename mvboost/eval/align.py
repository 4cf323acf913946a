"""Putting a prediction in the ground truth's frame (docs/evaluation.md "Aligning predictions").

1. Canonical transform: LGM's frame is our world (OpenGL Y-up, the input camera on +Z), which is where
   ``mvboost.assets.gso`` puts GSO objects, so it is the identity for LGM (and for PLYs in that frame).
2. Normalisation ("canonical"): the predicted mesh's bbox centre -> origin, longest side -> 1 (render
   space). A bbox depends on the pose, so the aligned variant (:func:`mvboost.eval.score`) starts from
   a rotation-invariant placement (centroid and RMS radius matched to the GT's), aligns, and only then
   re-normalises by the bbox, now in the GT's orientation (the paper aligns first, then rescales).
3. Refinement: yaw 0..345 deg in ``yaw_step_deg`` steps x the 24 rotations of the cube (axis
   permutations with signs, det +1), best by Chamfer on ``align_points`` samples (candidates within 5 %
   of the best count as ties and the smallest rotation among them wins: symmetric shapes keep their
   canonical pose instead of a 2D-wrong symmetric one), then rigid
   point-to-point ICP (trimesh, no scale, no reflection) on ``icp_points``. A best rotation that is not
   a pure yaw means the prediction's axes disagree with the GT's: recorded as a frame warning.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..assets.gso import METRIC_SCALE


def cube_rotations() -> list[np.ndarray]:
    """The 24 proper rotations that permute the axes (with signs); the identity first."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            for i, (j, s) in enumerate(zip(perm, signs)):
                m[i, j] = s
            if np.linalg.det(m) > 0:
                out.append(m)
    out.sort(key=lambda m: -np.trace(m))  # identity (trace 3) first
    return out


def yaw(deg: float) -> np.ndarray:
    """Rotation about +Y (our up axis)."""
    a = np.radians(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def is_yaw(r: np.ndarray, tol: float = 1e-6) -> bool:
    return abs(r[1, 1] - 1) < tol


def similarity(scale: float = 1.0, rot: np.ndarray | None = None, trans=(0.0, 0.0, 0.0)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = (np.eye(3) if rot is None else rot) * scale
    m[:3, 3] = trans
    return m


def normalisation(vertices: np.ndarray) -> np.ndarray:
    """4x4 taking a mesh to render space: bbox centre -> origin, longest side -> 1."""
    lo, hi = vertices.min(0), vertices.max(0)
    s = 1.0 / float(max((hi - lo).max(), 1e-9))
    return similarity(s, trans=-(lo + hi) / 2 * s)


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:3, :3].T + m[:3, 3]


def _cd_rotated(r: np.ndarray, ps: np.ndarray, tree_p, gs: np.ndarray, tree_g) -> float:
    """Chamfer between R ps and gs with both trees built once: |R p - g| = |p - R^T g|."""
    return 0.5 * tree_g.query(ps @ r.T, workers=-1)[0].mean() + 0.5 * tree_p.query(gs @ r, workers=-1)[0].mean()


def align(pred_pts: np.ndarray, gt_pts: np.ndarray, yaw_step: float = 15.0, permutations: bool = True,
          n_search: int = 4096, n_icp: int = 16384, icp_iterations: int = 50, seed: int = 0,
          tie_tol: float = 0.05) -> dict:
    """Rigid transform (4x4, metric space) taking ``pred_pts`` onto ``gt_pts``, with the search record."""
    from scipy.spatial import cKDTree
    from trimesh.registration import icp

    rng = np.random.default_rng(seed)

    def sub(p, n):
        return p[rng.choice(len(p), size=min(n, len(p)), replace=False)]

    ps, gs = sub(pred_pts, n_search), sub(gt_pts, n_search)
    tree_g, tree_p = cKDTree(gs), cKDTree(ps)
    cands = []
    perms = [p for i, p in enumerate(cube_rotations()) if i == 0 or not is_yaw(p)] if permutations else [np.eye(3)]
    for perm in perms:  # pure yaws among the cube rotations are already in the yaw grid
        for k in range(int(round(360 / yaw_step))):
            r = yaw(k * yaw_step) @ perm
            cands.append((_cd_rotated(r, ps, tree_p, gs, tree_g), r, k * yaw_step, perm))
    best_cd = min(c[0] for c in cands)
    # symmetric shapes (a box, a ball) score several rotations alike: within tie_tol of the best CD the
    # smallest rotation wins, so geometry that cannot tell rotations apart keeps the canonical pose
    ties = [c for c in cands if c[0] <= best_cd * (1 + tie_tol) + 1e-4]
    cd0, r, yaw_deg, perm = max(ties, key=lambda c: np.trace(c[1]))
    init = similarity(rot=r)
    m, _, cost = icp(sub(pred_pts, n_icp), sub(gt_pts, n_icp), initial=init, max_iterations=icp_iterations,
                     reflection=False, translation=True, scale=False)
    return {"matrix": np.asarray(m), "search_cd": float(cd0), "yaw_deg": float(yaw_deg),
            "axis_permutation": perm.astype(int).tolist(), "pure_yaw": bool(is_yaw(r)), "icp_cost": float(cost)}


def metric_to_render(m: np.ndarray) -> np.ndarray:
    """A similarity 4x4 in metric space (x2) as the same map in render space."""
    out = m.copy()
    out[:3, 3] = m[:3, 3] / METRIC_SCALE
    return out


def render_to_metric(m: np.ndarray) -> np.ndarray:
    """A similarity 4x4 in render space as the same map in metric space (x2)."""
    out = m.copy()
    out[:3, 3] = m[:3, 3] * METRIC_SCALE
    return out
