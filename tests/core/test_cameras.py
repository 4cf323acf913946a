import math

import pytest
import torch

from mvboost.geometry.cameras import (
    ERA3D_AZIMUTHS,
    ERA3D_ORTHO_WORLD_WIDTH,
    ERA3D_TO_LGM_VIEWS,
    LGM_INPUT_AZIMUTHS,
    Cameras,
    c2w_to_w2c,
    era3d_cameras,
    focal_from_fovy,
    lgm_input_cameras,
    opencv_to_opengl,
    opengl_to_opencv,
    orbit_camera,
    ortho_intrinsics,
    plucker_rays,
)


def test_orbit_axes_match_spec():
    poses = orbit_camera([0, 0, 0, 0], [0, 90, 180, 270], 1.5).double()
    right, back = poses[:, :3, 0], poses[:, :3, 2]
    expect_right = torch.tensor([[1, 0, 0], [0, 0, -1], [-1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    expect_back = torch.tensor([[0, 0, 1], [1, 0, 0], [0, 0, -1], [-1, 0, 0]], dtype=torch.float64)
    assert torch.allclose(right, expect_right, atol=1e-12)
    assert torch.allclose(back, expect_back, atol=1e-12)
    assert torch.allclose(poses[:, :3, 3], 1.5 * expect_back, atol=1e-12)
    # up is always +Y at elevation 0; rotations are proper
    assert torch.allclose(poses[:, :3, 1], torch.tensor([0.0, 1, 0], dtype=torch.float64).expand(4, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(poses[:, :3, :3]), torch.ones(4, dtype=torch.float64))


def test_negative_elevation_is_above():
    pose = orbit_camera(-30.0, 0.0, 2.0).double()
    assert pose[1, 3] == pytest.approx(2.0 * math.sin(math.radians(30)))
    # the camera looks towards the origin: -Z axis of the camera points at -campos
    look = -pose[:3, 2]
    assert torch.allclose(look, -pose[:3, 3] / pose[:3, 3].norm(), atol=1e-12)


def test_view0_top_left_plucker_matches_spec():
    rays = plucker_rays(orbit_camera(0.0, 0.0, 1.5).double(), 256, 256)
    moment, d = rays[:3, 0, 0], rays[3:, 0, 0]
    assert torch.allclose(d, torch.tensor([-0.383, 0.383, -0.841], dtype=torch.float64), atol=1e-3)
    assert torch.allclose(moment, torch.tensor([-0.574, -0.574, 0.0], dtype=torch.float64), atol=1e-3)
    assert focal_from_fovy(256) == pytest.approx(280.22, abs=0.01)
    assert focal_from_fovy(512) == pytest.approx(560.44, abs=0.01)


def test_conversions_roundtrip():
    c2w = orbit_camera([-20, 10], [33, 250], 1.5, dtype=torch.float64)
    assert torch.allclose(opencv_to_opengl(opengl_to_opencv(c2w)), c2w)
    w2c = c2w_to_w2c(c2w)
    assert torch.allclose(w2c @ c2w, torch.eye(4, dtype=torch.float64).expand(2, 4, 4), atol=1e-12)
    cv = opengl_to_opencv(c2w)
    # OpenCV camera: +z looks at the origin, +y points down in the world at elevation 0 region
    assert torch.allclose(cv[:, :3, 2], -c2w[:, :3, 2])
    assert torch.allclose(cv[:, :3, 1], -c2w[:, :3, 1])
    # the world origin projects to the image centre
    cams = Cameras(c2w.float(), torch.tensor([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]]), 64, 64)
    origin = cams.viewmats[:, :3, 3]
    assert torch.allclose(origin[:, :2], torch.zeros(2, 2), atol=1e-5)
    assert torch.allclose(origin[:, 2], torch.full((2,), 1.5), atol=1e-5)


def test_era3d_views_and_lgm_mapping():
    cams = era3d_cameras(512)
    assert cams.model == "ortho" and len(cams) == 6
    assert ERA3D_AZIMUTHS == (0.0, 45.0, 90.0, 180.0, 270.0, 315.0)
    assert ERA3D_ORTHO_WORLD_WIDTH == pytest.approx(1.370, abs=1e-3)
    assert cams.K[0, 0, 0] == pytest.approx(512 / 1.370, rel=1e-3)
    assert cams.K[0, 0, 0] == pytest.approx(ortho_intrinsics(512, 512)[0, 0])
    # the Era3D views feeding LGM have LGM's input azimuths, in LGM's order
    assert tuple(ERA3D_AZIMUTHS[i] for i in ERA3D_TO_LGM_VIEWS) == LGM_INPUT_AZIMUTHS
    lgm = lgm_input_cameras(256)
    for k, i in enumerate(ERA3D_TO_LGM_VIEWS):
        assert torch.allclose(cams.c2w[i, :3, :3], lgm.c2w[k, :3, :3], atol=1e-6)


def test_cameras_json_roundtrip():
    cams = era3d_cameras(64)
    back = Cameras.from_json(cams.to_json())
    assert back.model == "ortho" and back.width == 64
    assert torch.allclose(back.c2w, cams.c2w) and torch.allclose(back.K, cams.K)
    with pytest.raises(ValueError, match="camera model"):
        Cameras(cams.c2w, cams.K, 64, 64, "fisheye")
