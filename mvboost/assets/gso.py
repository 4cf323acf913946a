"""Google Scanned Objects on disk (any fsspec URL) -> normalised, Y-up textured meshes.

GSO layout: ``<NAME>/meshes/model.obj`` (+ ``model.mtl`` whose ``map_Kd texture.png`` is relative to
``meshes/``, where the file is not) and ``<NAME>/materials/textures/texture.png`` (where it is). Metres,
Z-up, origin on the base plane.

Frames: GSO's Z-up is mapped to our world (OpenGL Y-up, the input camera on +Z at azimuth 0):
(x, y, z)_gso -> (x, z, -y). Render space: bbox centre at the origin, longest side 1 ([-0.5, 0.5]);
metric space (CD/F) = render space x 2. The transform from GSO coordinates is kept with the object.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: rotation taking GSO's Z-up coordinates to our Y-up world
ZUP_TO_YUP = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])
METRIC_SCALE = 2.0  # metric space = render space x 2 ([-1, 1]^3)
THUMBNAIL = "thumbnails/0.jpg"  # GSO's first product shot (no camera)


@dataclass
class GSOObject:
    name: str
    folder: Path  # local copy
    vertices: np.ndarray  # (V, 3) render space, Y-up
    faces: np.ndarray  # (F, 3)
    uv: np.ndarray | None  # (V, 2) texture coordinates (None: untextured)
    texture: Path | None  # the albedo texture actually used
    transform: np.ndarray  # 4x4: GSO coordinates -> render space
    thumbnail: Path | None = None  # thumbnails/0.jpg (a product shot on white, no camera), if the folder has one

    def surface_points(self, n: int, seed: int) -> np.ndarray:
        """n points uniformly by area, metric space ([-1, 1]^3)."""
        from ..metrics.geometry import sample_surface

        return sample_surface(self.vertices * METRIC_SCALE, self.faces, n, seed)


def _open_fs(url: str):
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


def list_objects(root: str) -> list[str]:
    """Folder names under ``root`` that have ``meshes/model.obj``, sorted."""
    fs, path = _open_fs(root)
    if not fs.isdir(path):
        raise FileNotFoundError(f"GSO folder not found: {root}")
    names = []
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if fs.exists(f"{path}/{name}/meshes/model.obj"):
            names.append(name)
    return sorted(names)


def _localise(root: str, name: str, cache: Path) -> Path:
    """A local folder with the object's mesh, material and texture (copied when the URL is remote)."""
    fs, path = _open_fs(root)
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        local = Path(path) / name
        if local.is_dir():
            return local
    dest = cache / name
    for rel in ("meshes/model.obj", "meshes/model.mtl", "materials/textures/texture.png", THUMBNAIL):
        src = f"{path}/{name}/{rel}"
        if fs.exists(src):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            fs.get(src, str(dest / rel))
    return dest


def find_texture(folder: Path) -> Path | None:
    """The albedo texture: the mtl's map_Kd if it exists where it says, else GSO's real location."""
    mtl = folder / "meshes" / "model.mtl"
    if mtl.is_file():
        for line in mtl.read_text(errors="replace").splitlines():
            parts = line.strip().split(maxsplit=1)
            if len(parts) == 2 and parts[0] == "map_Kd":
                cand = (mtl.parent / parts[1].strip()).resolve()
                if cand.is_file():
                    return cand
    cand = folder / "materials" / "textures" / "texture.png"
    return cand if cand.is_file() else None


def load_object(root: str, name: str, cache: Path | None = None, z_up: bool = True) -> GSOObject:
    """Load, map to Y-up and normalise to render space. ``z_up=False`` reads the mesh as already Y-up
    (the deliberate mistake the frame check must catch)."""
    import trimesh

    cache = cache or Path(tempfile.mkdtemp(prefix="gso-"))
    folder = _localise(root, name, cache)
    obj = folder / "meshes" / "model.obj"
    if not obj.is_file():
        raise FileNotFoundError(f"{name}: no meshes/model.obj")
    import logging

    logging.getLogger("trimesh").setLevel(logging.ERROR)  # the mtl's texture path is wrong by design (GSO)
    mesh = trimesh.load(obj, force="mesh", process=False)
    if len(mesh.faces) == 0:
        raise ValueError(f"{name}: empty mesh")
    verts = np.asarray(mesh.vertices, np.float64)
    rot = ZUP_TO_YUP if z_up else np.eye(3)
    verts = verts @ rot.T
    lo, hi = verts.min(0), verts.max(0)
    centre, scale = (lo + hi) / 2, 1.0 / float((hi - lo).max())
    verts = (verts - centre) * scale
    transform = np.eye(4)
    transform[:3, :3] = rot * scale
    transform[:3, 3] = -centre * scale
    uv = getattr(mesh.visual, "uv", None)
    texture = find_texture(folder)
    thumb = folder / THUMBNAIL
    return GSOObject(name, folder, verts, np.asarray(mesh.faces), None if uv is None else np.asarray(uv, np.float64),
                     texture if uv is not None else None, transform, thumb if thumb.is_file() else None)
