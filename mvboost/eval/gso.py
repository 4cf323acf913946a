"""Google Scanned Objects on disk (any fsspec URL) -> normalised, Y-up textured meshes.

GSO layout: ``<NAME>/meshes/model.obj`` (+ ``model.mtl`` whose ``map_Kd texture.png`` is relative to
``meshes/``, where the file is not) and ``<NAME>/materials/textures/texture.png`` (where it is). Metres,
Z-up, origin on the base plane.

Frames: GSO's Z-up is mapped to our world (OpenGL Y-up, the input camera on +Z at azimuth 0):
(x, y, z)_gso -> (x, z, -y). Render space: bbox centre at the origin, longest side 1 ([-0.5, 0.5]);
metric space (CD/F) = render space x 2. The transform from GSO coordinates is kept with the object.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: rotation taking GSO's Z-up coordinates to our Y-up world
ZUP_TO_YUP = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])
METRIC_SCALE = 2.0  # metric space = render space x 2 ([-1, 1]^3)
SPLITS_DIR = Path(__file__).parent / "splits"
THUMBNAIL = "thumbnails/0.jpg"  # GSO's first product shot: the input of the ``thumbnail`` evaluation mode


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


def resolve_split(split: str, names: list[str]) -> tuple[list[str], dict]:
    """gso300 | gso30 | all | a file with one name per line -> (names, record with its sha256)."""
    if split == "all":
        chosen = list(names)
    elif split == "gso300":
        if len(names) < 300:
            raise ValueError(f"gso300 needs >= 300 objects, the folder has {len(names)}")
        rng = np.random.default_rng(0)
        chosen = sorted(rng.choice(sorted(names), 300, replace=False).tolist())
    elif split == "gso30":
        chosen = gso30(names)
    else:
        path = Path(split)
        if not path.is_file():
            raise ValueError(f"--split must be gso300, gso30, all or a list file, got {split!r}")
        chosen = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        unknown = [n for n in chosen if n not in names]
        if unknown:
            raise ValueError(f"split file {split}: {len(unknown)} names not in the folder, e.g. {unknown[:3]}")
    digest = hashlib.sha256("\n".join(chosen).encode()).hexdigest()
    record = {"split": split, "objects": len(chosen), "sha256": digest}
    if split == "gso30":
        record["gso30_file_sha256"] = hashlib.sha256((SPLITS_DIR / "gso30.json").read_bytes()).hexdigest()
    return chosen, record


def gso30(names: list[str], path: Path | None = None) -> list[str]:
    """The 30 objects of SyncDreamer/Wonder3D/Era3D as GSO folder names, from the pinned mapping. Their
    evaluation sets ship renamed copies (alarm, backpack, …) and no public source we could find maps the
    short names to GSO folders, so the mapping must be pinned by whoever has GSO: an unpinned entry is an
    error that says how, never a guess."""
    path = path or SPLITS_DIR / "gso30.json"
    mapping = json.loads(path.read_text())["objects"]
    unpinned = [short for short, folder in mapping.items() if not folder]
    if unpinned:
        raise ValueError(f"gso30: {len(unpinned)} of {len(mapping)} objects are not pinned to a GSO folder in {path} "
                         f"(e.g. {', '.join(unpinned[:4])}): set each value to the exact GSO folder name (find it by "
                         "its thumbnails/0.jpg, e.g. 'alarm' -> the alarm clock's folder), or pass --split with a "
                         "file listing the 30 folder names")
    missing = [f"{short} -> {folder}" for short, folder in mapping.items() if folder not in names]
    if missing:
        raise ValueError(f"gso30: {len(missing)} pinned folders are not in the object folder: {', '.join(missing[:5])}")
    return [mapping[short] for short in mapping]


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
