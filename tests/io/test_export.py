"""Exports that open right in the tools users open them with: GLB meshes wound outward with normals and a
material that shows vertex colours (checked by the Khronos glTF validator), for LGM's Gaussians and OpenLRM."""
import io
import json
import struct

import numpy as np
import pytest
import torch

from mvboost.gaussians import Gaussians
from mvboost.io.export import MESH_MATERIAL, gaussians_mesh, mesh_glb, signed_volume, write_glb


def ball(n=4000, radius=0.4, seed=0) -> Gaussians:
    """A closed test shape: opaque Gaussians filling a ball, a red upper half and a blue lower half."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    pts = d / d.norm(dim=-1, keepdim=True) * radius * torch.rand(n, 1, generator=g) ** (1 / 3)
    colors = torch.where(pts[:, 1:2] > 0, torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.1, 0.9]))
    return Gaussians(pts[None], torch.full((1, n), 0.9), torch.full((1, n, 3), 0.04),
                     torch.tensor([1.0, 0, 0, 0]).expand(1, n, 4), colors[None])


def glb_json(data: bytes) -> dict:
    length = struct.unpack_from("<I", data, 12)[0]
    return json.loads(data[20:20 + length])


def glb_attribute(data: bytes, name: str) -> np.ndarray:
    """One vertex attribute of the first primitive, read from the BIN chunk by its accessor."""
    doc = glb_json(data)
    length = struct.unpack_from("<I", data, 12)[0]
    binary = data[20 + length + 8:]
    acc = doc["accessors"][doc["meshes"][0]["primitives"][0]["attributes"][name]]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = {5121: np.uint8, 5126: np.float32}[acc["componentType"]]
    width = {"VEC3": 3, "VEC4": 4}[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    return np.frombuffer(binary, dtype, acc["count"] * width, start).reshape(-1, width)


def test_lgm_mesh_is_wound_outward():
    """Before: marching cubes' faces pointed inward (signed volume -1.64 on a real run, viewers showed the
    inside of a single-sided glTF)."""
    mesh = gaussians_mesh(ball(), resolution=48)
    assert signed_volume(mesh.vertices, mesh.faces) > 0.1  # a ball of radius ~0.4: ~0.27
    centroid = mesh.vertices.mean(0)
    normals = np.cross(mesh.vertices[mesh.faces[:, 1]] - mesh.vertices[mesh.faces[:, 0]],
                       mesh.vertices[mesh.faces[:, 2]] - mesh.vertices[mesh.faces[:, 0]])
    outward = np.einsum("ij,ij->i", normals, mesh.vertices[mesh.faces].mean(1) - centroid) > 0
    assert outward.mean() > 0.99, outward.mean()


def test_glb_has_normals_a_colour_material_and_outward_faces(tmp_path):
    import trimesh

    path = write_glb(ball(), tmp_path / "mesh.glb", resolution=48)
    doc = glb_json(path.read_bytes())
    prim = doc["meshes"][0]["primitives"][0]
    assert {"POSITION", "NORMAL", "COLOR_0"} <= set(prim["attributes"])
    assert doc["materials"][prim["material"]] == MESH_MATERIAL
    assert MESH_MATERIAL["pbrMetallicRoughness"]["metallicFactor"] == 0.0
    loaded = trimesh.load(io.BytesIO(path.read_bytes()), file_type="glb", force="mesh")
    assert signed_volume(loaded.vertices, loaded.faces) > 0.1
    data = path.read_bytes()
    positions, colours = glb_attribute(data, "POSITION"), glb_attribute(data, "COLOR_0")
    top = colours[positions[:, 1] > 0.2, :3].mean(0)
    assert top[0] > 150 and top[2] < 100  # the colours survive: red on top
    normals = glb_attribute(data, "NORMAL")
    assert (np.einsum("ij,ij->i", normals, positions - positions.mean(0)) > 0).mean() > 0.98  # outward normals
    # an inward-wound mesh handed to the writer comes out outward
    inverted = trimesh.creation.icosphere(subdivisions=2)
    inverted.faces = inverted.faces[:, ::-1]
    assert signed_volume(inverted.vertices, inverted.faces) < 0
    fixed = trimesh.load(io.BytesIO(mesh_glb(inverted)), file_type="glb", force="mesh")
    assert signed_volume(fixed.vertices, fixed.faces) == pytest.approx(-signed_volume(inverted.vertices,
                                                                                       inverted.faces), rel=1e-5)


def test_khronos_validator_accepts_the_lgm_and_openlrm_meshes(tmp_path, gltf_validate):
    from mvboost.models.openlrm import OpenLRM, OpenLRMConfig, extract_mesh, source_camera

    lgm = write_glb(ball(), tmp_path / "lgm.glb", resolution=40)
    torch.manual_seed(0)
    model = OpenLRM(OpenLRMConfig.preset("tiny")).eval()
    with torch.no_grad():
        planes = model.forward_planes(torch.rand(1, 3, 56, 56), source_camera())
        sigma, _ = model.query(planes, torch.rand(1, 4096, 3) * 2 - 1)
    openlrm = tmp_path / "openlrm.glb"
    openlrm.write_bytes(mesh_glb(extract_mesh(model, planes, resolution=20, threshold=float(sigma.median()))))
    for path in (lgm, openlrm):
        report = gltf_validate(path)
        issues = report["issues"]
        assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, (path.name, issues["messages"][:5])
        assert issues["numHints"] == 0, (path.name, issues["messages"][:5])
        assert "KHR_materials_unlit" in report["info"].get("extensionsUsed", []), report["info"]


def test_ply_frames_and_sh3_layout_round_trip(tmp_path):
    """The native frame (default, named in the header), the viewer frame (-Y up: 180° about X, positions and
    orientations), the SH-degree-3 layout with zero f_rest_*, and a reader that turns a viewer-frame file back
    and says when it drops view-dependent colour."""
    import warnings

    import plyfile

    from mvboost.gaussians import PLY_FRAMES, VIEWER_FROM_NATIVE, quat_to_rotmat
    from mvboost.io.export import write_ply

    g = ball(n=500)
    g.quats = torch.nn.functional.normalize(torch.randn(1, 500, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    g.scales = torch.rand(1, 500, 3, generator=torch.Generator().manual_seed(2)) * 0.05 + 0.01
    native = plyfile.PlyData.read(str(write_ply(g, tmp_path / "native.ply")))
    viewer = plyfile.PlyData.read(str(write_ply(g, tmp_path / "viewer.ply", frame="viewer", sh_degree=3)))
    assert native.comments == [PLY_FRAMES["native"]] and viewer.comments == [PLY_FRAMES["viewer"]]
    names = [p.name for p in viewer["vertex"].properties]
    assert names[:6] == ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"] and names[-8:-4] == ["opacity", "scale_0",
                                                                                          "scale_1", "scale_2"]
    assert [n for n in names if n.startswith("f_rest_")] == [f"f_rest_{i}" for i in range(45)]
    assert all(np.all(viewer["vertex"][f"f_rest_{i}"] == 0) for i in range(45))
    assert not [p.name for p in native["vertex"].properties if p.name.startswith("f_rest_")]
    nv, vv = native["vertex"], viewer["vertex"]
    np.testing.assert_allclose(vv["x"], nv["x"], atol=1e-6)
    np.testing.assert_allclose(vv["y"], -nv["y"], atol=1e-6)  # upside down for -Y-up viewers
    np.testing.assert_allclose(vv["z"], -nv["z"], atol=1e-6)
    # each Gaussian's covariance turns with the frame: R_v = F R_n
    q_n = torch.from_numpy(np.stack([nv[f"rot_{i}"] for i in range(4)], 1))
    q_v = torch.from_numpy(np.stack([vv[f"rot_{i}"] for i in range(4)], 1))
    torch.testing.assert_close(quat_to_rotmat(q_v), VIEWER_FROM_NATIVE @ quat_to_rotmat(q_n), atol=1e-5, rtol=0)
    # the reader: the viewer file comes back in our frame; non-zero f_rest is dropped with a warning
    back = Gaussians.from_ply(tmp_path / "viewer.ply")
    torch.testing.assert_close(back.means, g.means, atol=1e-5, rtol=0)
    torch.testing.assert_close(quat_to_rotmat(back.quats), quat_to_rotmat(g.quats), atol=1e-5, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Gaussians.from_ply(tmp_path / "viewer.ply")  # zero f_rest: nothing is lost, no warning
    vv["f_rest_0"][:] = 0.3
    viewer.write(str(tmp_path / "sh.ply"))
    with pytest.warns(UserWarning, match="f_rest_.*dropped"):
        Gaussians.from_ply(tmp_path / "sh.ply")
    with pytest.raises(ValueError, match="frame"):
        g.to_ply_bytes(frame="colmap")


def test_oracle_pictures_go_through_the_same_exports(tmp_path):
    """bench/oracle_pictures.py (the README's pictures): the asset-library oracle through the inference exports."""
    import sys

    from PIL import Image

    sys.path.insert(0, str(__import__("conftest").REPO / "bench"))
    import oracle_pictures

    assert oracle_pictures.main(["--out", str(tmp_path), "--size", "48", "--points", "4000", "--files"]) == 0
    views = np.asarray(Image.open(tmp_path / "oracle_views.png").convert("RGB"))
    assert views.shape == (48, 6 * 48, 3) and (views < 200).any(axis=-1).mean() > 0.05  # an object, not a blank
    assert Image.open(tmp_path / "oracle_turntable.gif").n_frames == 24
    assert Gaussians.from_ply(tmp_path / "gaussians_viewer.ply").means.shape == (1, 4000, 3)
    assert glb_json((tmp_path / "mesh.glb").read_bytes())["materials"] == [MESH_MATERIAL]
