"""Exports of reconstructed Gaussians that open in standard viewers: 3DGS ``.ply``, a vertex-coloured
``.glb`` mesh and a turntable ``.gif``/``.mp4``. Used by the inference CLI and the evaluation harness.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..gaussians import Gaussians
from .codec import to_uint8


def write_ply(g: Gaussians, path: str | Path, index: int = 0, frame: str = "native", sh_degree: int = 0) -> Path:
    """The 3DGS layout. ``frame``: ``native`` (LGM's +Y up; the official LGM viewer, gsplat's viewer) or
    ``viewer`` (-Y up: SuperSplat and viewers made for COLMAP-trained scenes); ``sh_degree`` 3 adds zero
    ``f_rest_*`` fields for viewers that require them (SIBR and some engine plugins)."""
    path = Path(path)
    g.save_ply(path, index=index, frame=frame, sh_degree=sh_degree)
    return path


def vertex_colors(g: Gaussians, vertices: np.ndarray, k: int = 8) -> np.ndarray:
    """(V,3) uint8 colours for mesh vertices: the k nearest Gaussians' colours weighted by opacity x
    their kernel at the vertex (the nearest one's colour where every weight vanishes)."""
    from scipy.spatial import cKDTree

    g0 = g[0].to(dtype=torch.float32)
    means = g0.means[0].numpy()
    colors = g0.colors[0].clamp(0, 1).numpy()
    op = g0.opacities[0].numpy()
    sigma = g0.scales[0].max(dim=-1).values.clamp_min(1e-4).numpy()
    k = min(k, len(means))
    dist, idx = cKDTree(means).query(vertices, k=k)
    dist, idx = dist.reshape(len(vertices), k), idx.reshape(len(vertices), k)
    w = op[idx] * np.exp(-0.5 * (dist / sigma[idx]) ** 2)
    fallback = w.sum(1) < 1e-8
    w[fallback] = 0
    w[fallback, 0] = 1
    rgb = (w[..., None] * colors[idx]).sum(1) / w.sum(1, keepdims=True)
    return to_uint8(rgb)


def gaussians_mesh(g: Gaussians, resolution: int = 96, level: float = 0.5):
    """A ``trimesh.Trimesh`` of the Gaussians' density iso-surface (``mvboost.metrics.gaussians_to_mesh``)
    with per-vertex colours. World frame: LGM's (+Y up, front on +Z), as glTF expects (+Y up)."""
    import trimesh

    from ..metrics.geometry import gaussians_to_mesh

    verts, faces = gaussians_to_mesh(g[0], resolution=resolution, level=level)
    rgba = np.concatenate([vertex_colors(g, verts), np.full((len(verts), 1), 255, np.uint8)], axis=1)
    return trimesh.Trimesh(vertices=verts, faces=faces, vertex_colors=rgba, process=False)


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """The signed volume of a triangle mesh (positive when its faces are wound counter-clockwise seen from
    outside, i.e. their normals point out; exact for a closed mesh)."""
    v = np.asarray(vertices, np.float64)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


#: the material of our meshes: vertex colours shown as colours. glTF's default material is fully metallic
#: (vertex colours render dark or not at all); KHR_materials_unlit shows the colours as they are (they carry
#: the lighting already), and viewers without the extension fall back to a rough dielectric.
MESH_MATERIAL = {"name": "vertex_colour", "pbrMetallicRoughness": {"baseColorFactor": [1.0, 1.0, 1.0, 1.0],
                 "metallicFactor": 0.0, "roughnessFactor": 1.0}, "doubleSided": False,
                 "extensions": {"KHR_materials_unlit": {}}}


def mesh_glb(mesh) -> bytes:
    """A vertex-coloured ``trimesh.Trimesh`` as a GLB that viewers show right: faces wound outward (inverted
    when the signed volume is negative), vertex normals, and :data:`MESH_MATERIAL` on every primitive."""
    import json
    import struct

    import trimesh

    if signed_volume(mesh.vertices, mesh.faces) < 0:
        mesh = mesh.copy()
        mesh.faces = np.ascontiguousarray(mesh.faces[:, ::-1])
    raw = trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh), include_normals=True)
    length = struct.unpack_from("<I", raw, 12)[0]
    doc = json.loads(raw[20:20 + length])
    binary = raw[20 + length:]  # the BIN chunk, header included
    doc["materials"] = [MESH_MATERIAL]
    for m in doc["meshes"]:
        for prim in m["primitives"]:
            prim["material"] = 0
            for acc in prim["attributes"].values():  # vertex data / index data (glTF's recommended targets)
                doc["bufferViews"][doc["accessors"][acc]["bufferView"]]["target"] = 34962
            if "indices" in prim:
                doc["bufferViews"][doc["accessors"][prim["indices"]]["bufferView"]]["target"] = 34963
    doc["extensionsUsed"] = sorted(set(doc.get("extensionsUsed", [])) | {"KHR_materials_unlit"})
    text = json.dumps(doc, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)  # chunks are 4-byte aligned, JSON padded with spaces
    body = struct.pack("<I4s", len(text), b"JSON") + text + binary
    return struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body


def write_glb(g: Gaussians, path: str | Path, resolution: int = 96, level: float = 0.5) -> Path:
    path = Path(path)
    path.write_bytes(mesh_glb(gaussians_mesh(g, resolution, level)))
    return path


def turntable_cameras(frames: int = 36, size: int = 256, elevation: float = -15.0, camera: str = "pinhole"):
    """The turntable's cameras: a full circle of ``frames`` azimuths at ``elevation`` (pinhole at LGM's distance
    and field of view, or Era3D's orthographic views)."""
    from ..geometry.cameras import (
        ERA3D_ORTHO_WORLD_WIDTH,
        ORTHO_CAM_RADIUS,
        Cameras,
        orbit_camera,
        ortho_intrinsics,
        pinhole_intrinsics,
    )

    az = [360.0 * i / frames for i in range(frames)]
    if camera == "ortho":
        return Cameras(orbit_camera([elevation] * frames, az, ORTHO_CAM_RADIUS),
                       ortho_intrinsics(size, size, ERA3D_ORTHO_WORLD_WIDTH), size, size, "ortho")
    return Cameras(orbit_camera([elevation] * frames, az), pinhole_intrinsics(size, size), size, size)


def turntable_frames(g: Gaussians, frames: int = 36, size: int = 256, elevation: float = -15.0,
                     camera: str = "pinhole") -> np.ndarray:
    """(frames, size, size, 3) uint8: the object rendered on white around a full circle of azimuths."""
    from ..render import render

    cams = turntable_cameras(frames, size, elevation, camera)
    with torch.no_grad():
        rgb = render(g[0], cams.to(g.means.device)).rgb[0]
    return to_uint8(rgb.permute(0, 2, 3, 1).cpu().numpy())


def write_turntable(frames: np.ndarray, path: str | Path, fps: int = 12) -> Path:
    """``.gif`` (Pillow) or ``.mp4`` (imageio with its ffmpeg plugin, ``pip install imageio[ffmpeg]``)."""
    path = Path(path)
    if path.suffix == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    elif path.suffix == ".mp4":
        try:
            import imageio.v2 as imageio

            imageio.mimsave(path, list(frames), fps=fps, macro_block_size=1)
        except (ImportError, ValueError, RuntimeError) as e:
            raise RuntimeError(f"writing {path.name} needs imageio with ffmpeg (pip install 'imageio[ffmpeg]'), "
                               f"or use a .gif turntable: {e}") from None
    else:
        raise ValueError(f"turntable format must be .gif or .mp4, got {path.suffix!r}")
    return path
