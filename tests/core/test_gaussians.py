import io

import numpy as np
import pytest
import torch
from plyfile import PlyData

from mvboost.gaussians import SH_C0, Gaussians, quat_to_rotmat


def random_gaussians(n=50, b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, n, 4, generator=g)
    return Gaussians(torch.rand(b, n, 3, generator=g) * 2 - 1, torch.rand(b, n, generator=g) * 0.9 + 0.05,
                     torch.rand(b, n, 3, generator=g) * 0.05 + 0.01, q / q.norm(dim=-1, keepdim=True),
                     torch.rand(b, n, 3, generator=g))


def test_lgm_roundtrip_and_shapes():
    g = random_gaussians(b=2)
    assert torch.equal(Gaussians.from_lgm(g.to_lgm()).means, g.means)
    assert g.batch_size == 2 and len(g) == 50 and g[1].batch_size == 1
    with pytest.raises(ValueError, match="scales"):
        Gaussians(g.means, g.opacities, g.scales[..., :2], g.quats, g.colors)
    bad = g.to_lgm()
    bad[1, 3, 0] = float("nan")
    assert Gaussians.from_lgm(bad).isfinite().tolist() == [True, False]


def test_ply_layout_and_roundtrip(tmp_path):
    g = random_gaussians(n=40)
    g.opacities[0, :5] = 0.001  # dropped on export (< 0.005)
    data = g.to_ply_bytes()
    ply = PlyData.read(io.BytesIO(data))
    names = [p.name for p in ply["vertex"].properties]
    assert names == ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                     "rot_0", "rot_1", "rot_2", "rot_3"]
    assert all(p.val_dtype in ("f4", "float32", "float") for p in ply["vertex"].properties)
    assert ply["vertex"].count == 35
    assert data.startswith(b"ply\nformat binary_little_endian 1.0")
    np.testing.assert_allclose(ply["vertex"]["f_dc_0"], ((g.colors[0, 5:, 0] - 0.5) / SH_C0).numpy(), rtol=1e-5)
    g.save_ply(tmp_path / "x.ply")
    back = Gaussians.from_ply(tmp_path / "x.ply")
    for name in ("means", "opacities", "scales", "quats", "colors"):
        torch.testing.assert_close(getattr(back, name)[0], getattr(g, name)[0, 5:], rtol=1e-4, atol=1e-5)


def test_quat_to_rotmat_is_rotation():
    q = torch.randn(100, 4, dtype=torch.float64)
    r = quat_to_rotmat(q)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(100, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(100, dtype=torch.float64))
    # 90 degrees about z maps x to y (wxyz)
    r90 = quat_to_rotmat(torch.tensor([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)], dtype=torch.float64))
    assert torch.allclose(r90 @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                          torch.tensor([0.0, 1, 0], dtype=torch.float64), atol=1e-12)
