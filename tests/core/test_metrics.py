import numpy as np
import pytest
import torch

from mvboost.gaussians import Gaussians
from mvboost.metrics.geometry import chamfer_fscore, gaussians_to_mesh, psnr, sample_surface, ssim


def images(seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.random((48, 40, 3))
    return gt, np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1)


def test_psnr_against_scikit_image_and_definition():
    from skimage.metrics import peak_signal_noise_ratio

    gt, pred = images()
    assert psnr(pred, gt) == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=1.0))
    assert psnr(np.full((2, 2, 3), 0.5), np.full((2, 2, 3), 0.4)) == pytest.approx(20.0)
    assert psnr(gt, gt) == float("inf")


def test_ssim_against_an_independent_gaussian_window_implementation():
    from scipy.ndimage import gaussian_filter

    gt, pred = images(1)

    def ref(x, y):
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        out = []
        for ch in range(3):
            a, b = x[..., ch], y[..., ch]
            f = lambda t: gaussian_filter(t, 1.5, truncate=3.5)  # noqa: E731 (11-px window)
            mx, my = f(a), f(b)
            vx, vy, cxy = f(a * a) - mx * mx, f(b * b) - my * my, f(a * b) - mx * my
            m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
            out.append(m[5:-5, 5:-5].mean())  # scikit-image crops the window's half-width
        return float(np.mean(out))

    assert ssim(pred, gt) == pytest.approx(ref(pred, gt), abs=1e-6)
    assert ssim(gt, gt) == pytest.approx(1.0)


def test_chamfer_and_fscore_against_brute_force():
    rng = np.random.default_rng(0)
    p, g = rng.random((300, 3)), rng.random((200, 3)) + 0.05
    d = np.linalg.norm(p[:, None] - g[None], axis=-1)
    d_pg, d_gp = d.min(1), d.min(0)
    m = chamfer_fscore(p, g)
    assert m["cd"] == pytest.approx(0.5 * d_pg.mean() + 0.5 * d_gp.mean())
    assert m["cd_sum"] == pytest.approx(d_pg.mean() + d_gp.mean())
    assert m["cd_sq"] == pytest.approx(0.5 * (d_pg ** 2).mean() + 0.5 * (d_gp ** 2).mean())
    prec, rec = (d_pg < 0.1).mean(), (d_gp < 0.1).mean()
    assert m["f@0.1"] == pytest.approx(2 * prec * rec / (prec + rec))
    prec, rec = (d_pg ** 2 < 0.05).mean(), (d_gp ** 2 < 0.05).mean()
    assert m["f_sq@0.05"] == pytest.approx(2 * prec * rec / (prec + rec))


def test_surface_sampling_and_noise_floor():
    import trimesh

    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    pts = sample_surface(box.vertices, box.faces, 4000, seed=0)
    assert np.allclose(np.abs(pts).max(axis=1), 0.5)  # every point lies on a face
    assert np.array_equal(pts, sample_surface(box.vertices, box.faces, 4000, seed=0))  # fixed seed
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    a = sample_surface(sphere.vertices, sphere.faces, 16000, seed=0)
    b = sample_surface(sphere.vertices, sphere.faces, 16000, seed=1)
    assert chamfer_fscore(a, b)["cd"] < 0.02  # resampling the same surface: only the noise floor


def test_mesh_from_gaussians_recovers_a_sphere():
    torch.manual_seed(0)
    n = 3000
    d = torch.randn(n, 3)
    d = 0.5 * d / d.norm(dim=1, keepdim=True)
    q = torch.zeros(n, 4)
    q[:, 0] = 1
    g = Gaussians(d, torch.full((n,), 0.9), torch.full((n, 3), 0.03), q, torch.full((n, 3), 0.5))
    verts, faces = gaussians_to_mesh(g, resolution=64, level=0.5)
    pts = sample_surface(verts, faces, 4000)
    r = np.linalg.norm(pts, axis=1)
    # a shell of Gaussians (std 0.03) gives an inner and an outer iso-surface hugging radius 0.5
    assert np.abs(r - 0.5).max() < 0.1
    assert (r > 0.5).mean() > 0.4 and (r < 0.5).mean() > 0.2
    with pytest.raises(ValueError, match="never reaches"):
        gaussians_to_mesh(g, resolution=32, level=1e6)


def test_gaussian_density_matches_a_dense_evaluation():
    """Every voxel against every Gaussian (inside each one's 3-sigma box of voxels), directly."""
    from mvboost.metrics.geometry import gaussian_density

    torch.manual_seed(0)
    n, res, bound = 40, 24, 1.0
    q = torch.randn(n, 4)
    g = Gaussians(torch.rand(n, 3) * 1.6 - 0.8, torch.rand(n) * 0.9 + 0.1, torch.rand(n, 3) * 0.15 + 0.01,
                  q / q.norm(dim=1, keepdim=True), torch.rand(n, 3))
    got = gaussian_density(g, res, bound, max_elems=500)  # small chunks: many scatter calls
    from mvboost.gaussians import quat_to_rotmat

    axis = torch.linspace(-bound, bound, res, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
    step = float(axis[1] - axis[0])
    want = torch.zeros(res, res, res, dtype=torch.float64)
    means, scales, op = g.means[0].double(), g.scales[0].double(), g.opacities[0].double()
    rot = quat_to_rotmat(g.quats[0].double())
    for i in range(n):
        inv = rot[i] @ torch.diag(1 / scales[i] ** 2) @ rot[i].T
        d = grid - means[i]
        val = op[i] * torch.exp(-0.5 * torch.einsum("...i,ij,...j->...", d, inv, d))
        r = int(np.ceil(3 * float(scales[i].max()) / step))
        c = torch.round((means[i] + bound) / step).long()
        box = torch.zeros_like(val, dtype=torch.bool)
        box[max(0, c[0] - r):c[0] + r + 1, max(0, c[1] - r):c[1] + r + 1, max(0, c[2] - r):c[2] + r + 1] = True
        want += torch.where(box, val, torch.zeros_like(val))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)
    assert want.max() > 0.5
