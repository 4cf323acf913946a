import math

import pytest
import torch

from mvboost.gaussians import Gaussians
from mvboost.geometry.cameras import Cameras, era3d_cameras, lgm_input_cameras, orbit_camera, pinhole_intrinsics
from mvboost.models.lgm import LGM, LGMConfig
from mvboost.render import render


def one(mean, scale=0.03, opacity=0.5, color=(1.0, 0.0, 0.0), dtype=torch.float32):
    return Gaussians(torch.tensor([mean], dtype=dtype), torch.tensor([opacity], dtype=dtype),
                     torch.full((1, 3), scale, dtype=dtype), torch.tensor([[1.0, 0, 0, 0]], dtype=dtype),
                     torch.tensor([color], dtype=dtype))


def moments(alpha):
    h, w = alpha.shape
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    m = alpha.sum()
    cx, cy = (alpha * xs).sum() / m, (alpha * ys).sum() / m
    vx, vy = (alpha * (xs - cx) ** 2).sum() / m, (alpha * (ys - cy) ** 2).sum() / m
    return cx.item(), cy.item(), vx.item(), vy.item()


@pytest.mark.parametrize("model", ["pinhole", "ortho"])
def test_single_gaussian_position_and_size(model):
    size, s = 128, 0.03
    g = one((0.1, 0.2, 0.0), scale=s, opacity=0.2)
    cams = lgm_input_cameras(size) if model == "pinhole" else era3d_cameras(size)
    out = render(g, cams, background=(0, 0, 0))
    f = cams.K[0, 0, 0].item()
    if model == "pinhole":  # front camera at z = 1.5
        u, v, sigma_px = f * 0.1 / 1.5 + size / 2, -f * 0.2 / 1.5 + size / 2, f * s / 1.5
    else:
        u, v, sigma_px = f * 0.1 + size / 2, -f * 0.2 + size / 2, f * s
    cx, cy, vx, vy = moments(out.alpha[0, 0, 0])
    assert cx == pytest.approx(u, abs=0.05) and cy == pytest.approx(v, abs=0.05)
    expected_var = sigma_px ** 2 + 0.3  # EWA + dilation; the 1/255 cut-off trims the tails slightly
    assert vx == pytest.approx(expected_var, rel=0.1) and vy == pytest.approx(expected_var, rel=0.1)
    # the peak alpha is the opacity (at the centre)
    assert out.alpha.max().item() == pytest.approx(0.2, rel=0.02)
    # depth of that pixel is the camera distance
    iy, ix = int(v), int(u)
    expect_depth = 1.5 if model == "pinhole" else 4.0
    assert out.depth[0, 0, 0, iy, ix].item() == pytest.approx(expect_depth, rel=1e-4)


def test_occlusion_order():
    red = one((0.0, 0.0, 0.3), scale=0.1, opacity=0.99, color=(1, 0, 0))
    blue = one((0.0, 0.0, -0.3), scale=0.1, opacity=0.99, color=(0, 0, 1))
    g = Gaussians(*(torch.cat([getattr(blue, k), getattr(red, k)], 1)
                    for k in ("means", "opacities", "scales", "quats", "colors")))
    out = render(g, lgm_input_cameras(32, azimuths=(0.0, 180.0)), background=(1, 1, 1))
    front, back = out.rgb[0, 0, :, 16, 16], out.rgb[0, 1, :, 16, 16]
    assert front[0] > 0.95 and front[2] < 0.05  # the +z camera sees red
    assert back[2] > 0.95 and back[0] < 0.05  # the -z camera sees blue


def test_background_compositing():
    g = one((0.0, 0.0, 0.0), scale=0.05, opacity=0.6, color=(0.2, 0.4, 0.6))
    bg = (0.3, 0.9, 0.1)
    out = render(g, lgm_input_cameras(32), background=bg)
    a = out.alpha[0, 0, 0]
    expected = torch.tensor([0.2, 0.4, 0.6])[:, None, None] * a + torch.tensor(bg)[:, None, None] * (1 - a)
    torch.testing.assert_close(out.rgb[0, 0], expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(out.rgb[0, 0, :, 0, 0], torch.tensor(bg))  # an empty corner is the background
    # behind the near plane: culled
    cam = Cameras(orbit_camera(0.0, 0.0, 0.1), pinhole_intrinsics(32, 32), 32, 32)
    assert render(g, cam).alpha.max() == 0


def test_tiling_and_chunking_do_not_change_the_image():
    torch.manual_seed(0)
    n = 300
    q = torch.randn(1, n, 4)
    g = Gaussians(torch.rand(1, n, 3) - 0.5, torch.rand(1, n) * 0.9 + 0.1, torch.rand(1, n, 3) * 0.05 + 0.01,
                  q / q.norm(dim=-1, keepdim=True), torch.rand(1, n, 3))
    cams = era3d_cameras(48)
    ref = render(g, cams, tile_size=48, chunk=100000)
    for ts, ch in ((16, 7), (8, 64), (20, 1000)):
        out = render(g, cams, tile_size=ts, chunk=ch)
        torch.testing.assert_close(out.rgb, ref.rgb, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.alpha, ref.alpha, rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_parameter_gradcheck():
    dt = torch.float64
    means = torch.tensor([[[0.02, 0.01, 0.0], [-0.05, 0.04, 0.1], [0.06, -0.03, -0.1]]], dtype=dt, requires_grad=True)
    opac = torch.tensor([[0.6, 0.5, 0.7]], dtype=dt, requires_grad=True)
    scales = torch.tensor([[[0.05, 0.04, 0.06], [0.04, 0.05, 0.03], [0.06, 0.05, 0.04]]], dtype=dt,
                          requires_grad=True)
    quats = torch.tensor([[[0.9, 0.1, 0.2, 0.1], [0.8, -0.2, 0.1, 0.3], [1.0, 0.0, 0.1, -0.2]]], dtype=dt,
                         requires_grad=True)
    colors = torch.tensor([[[0.9, 0.1, 0.2], [0.1, 0.8, 0.3], [0.2, 0.3, 0.9]]], dtype=dt, requires_grad=True)
    cams = lgm_input_cameras(8).to(dtype=dt)
    cams = Cameras(cams.c2w[:1], cams.K[:1], 8, 8)

    def f(m, o, s, q, c):
        return render(Gaussians(m, o, s, q, c), cams, background=(1.0, 1.0, 1.0)).rgb.sum(dim=(0, 1, 3, 4))

    assert torch.autograd.gradcheck(f, (means, opac, scales, quats, colors), eps=1e-6, atol=1e-4)
    loss = f(means, opac, scales, quats, colors).sum()
    loss.backward()
    for t in (means, opac, scales, quats, colors):
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_tiny_lgm_output_renders_at_both_camera_sets():
    torch.manual_seed(0)
    model = LGM(LGMConfig.preset("tiny")).eval()
    with torch.no_grad():
        g = Gaussians.from_lgm(model(model.prepare_inputs(torch.rand(2, 4, 3, 64, 64))))
        persp = render(g, lgm_input_cameras(64))
        ortho = render(g, era3d_cameras(64))
    assert persp.rgb.shape == (2, 4, 3, 64, 64) and ortho.rgb.shape == (2, 6, 3, 64, 64)
    for out in (persp, ortho):
        assert torch.isfinite(out.rgb).all() and out.alpha.max() > 0.5
        assert out.rgb.min() >= 0 and out.rgb.max() <= 1


def test_sphere_extent_in_perspective_vs_ortho_framing():
    # Gaussians on a sphere of radius 0.4: perspective (fovy 49.1, r 1.5) and the Era3D ortho framing
    # (1.370 world units across) give nearly the same silhouette width near the origin.
    n = 2000
    torch.manual_seed(0)
    d = torch.randn(n, 3)
    d = 0.4 * d / d.norm(dim=1, keepdim=True)
    q = torch.zeros(n, 4)
    q[:, 0] = 1
    g = Gaussians(d, torch.full((n,), 0.9), torch.full((n, 3), 0.02), q, torch.full((n, 3), 0.5))
    p = render(g, lgm_input_cameras(64, azimuths=(0.0,))).alpha[0, 0, 0]
    o = render(g, era3d_cameras(64)).alpha[0, 0, 0]
    width = lambda a: (a.max(0).values > 0.5).sum().item()
    # ortho: 0.8 world units (+ the Gaussians' soft rim, 0 to 2 std-devs) at 64 / 1.370 px per unit
    lo, hi = 0.8 / 1.370 * 64, (0.8 + 4 * 0.02) / 1.370 * 64
    assert lo - 1 <= width(o) <= hi + 1
    # perspective magnifies a sphere at distance 1.5 by 1 / sqrt(1 - (r/1.5)^2) ~ 1.04
    assert 0 <= width(p) - width(o) <= 4


@pytest.mark.gpu
def test_cpu_rasterizer_matches_gsplat():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    n = 5000
    q = torch.randn(2, n, 4)
    g = Gaussians(torch.rand(2, n, 3) * 1.2 - 0.6, torch.rand(2, n) * 0.9 + 0.05,
                  torch.rand(2, n, 3) * 0.03 + 0.005, q / q.norm(dim=-1, keepdim=True), torch.rand(2, n, 3))
    for cams in (lgm_input_cameras(128), era3d_cameras(128)):
        ref = render(g, cams, backend="torch")
        gpu = render(g.to("cuda"), cams.to("cuda"), backend="gsplat")
        mse = ((ref.rgb - gpu.rgb.cpu()) ** 2).mean()
        psnr = -10 * math.log10(mse.item() + 1e-12)
        print(f"{cams.model}: PSNR CPU vs gsplat {psnr:.2f} dB")
        assert psnr >= 40


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gaussians_render_in_fp32(dtype):
    """bf16/fp16 Gaussians (a bf16 LGM's output) render in fp32 and give fp32 images equal to rendering
    the same (rounded) values in fp32; gradients reach the half-precision tensors."""
    torch.manual_seed(0)
    model = LGM(LGMConfig.preset("tiny")).eval()
    with torch.no_grad():
        half = Gaussians.from_lgm(model(model.prepare_inputs(torch.rand(1, 4, 3, 32, 32))).to(dtype))
    cams = era3d_cameras(32)
    out = render(half, cams)
    ref = render(half.to(torch.float32), cams)
    assert out.rgb.dtype == out.alpha.dtype == out.depth.dtype == torch.float32
    assert torch.equal(out.rgb, ref.rgb) and torch.equal(out.alpha, ref.alpha) and out.alpha.max() > 0.1
    from mvboost.render import render_normals

    assert render_normals(half, cams).dtype == torch.float32
    colors = half.colors.clone().requires_grad_(True)
    g = Gaussians(half.means, half.opacities, half.scales, half.quats, colors)
    render(g, cams).rgb.sum().backward()
    assert colors.grad is not None and colors.grad.dtype == dtype and colors.grad.abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gsplat_takes_half_precision_gaussians(dtype):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    n = 4000
    q = torch.randn(1, n, 4)
    g = Gaussians(torch.rand(1, n, 3) * 1.2 - 0.6, torch.rand(1, n) * 0.9 + 0.05, torch.rand(1, n, 3) * 0.03 + 0.005,
                  q / q.norm(dim=-1, keepdim=True), torch.rand(1, n, 3)).to("cuda", dtype)
    cams = era3d_cameras(128).to("cuda")
    out = render(g, cams, backend="gsplat")
    ref = render(g.to(torch.float32), cams, backend="gsplat")
    assert out.rgb.dtype == torch.float32 and torch.equal(out.rgb, ref.rgb)
