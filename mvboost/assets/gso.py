"""Google Scanned Objects on disk (any fsspec URL) -> normalised, Y-up textured meshes.

GSO layout: ``<NAME>/meshes/model.obj`` (+ ``model.mtl`` whose ``map_Kd texture.png`` is relative to
``meshes/``, where the file is not) and ``<NAME>/materials/textures/texture.png`` (where it is). Metres,
Z-up, origin on the base plane.

Frames: GSO's Z-up is mapped to our world (OpenGL Y-up, the input camera on +Z at azimuth 0):
(x, y, z)_gso -> (x, z, -y). Render space: bbox centre at the origin, longest side 1 ([-0.5, 0.5]);
metric space (CD/F) = render space x 2. The transform from GSO coordinates is kept with the object.

Asset folders (the generation job's asset source) hold GSO-layout objects and/or plain mesh files
(``*.obj``, ``*.glb``, ``*.gltf``; Y-up as glTF and Objaverse have them): :func:`list_assets` finds both,
:func:`load_asset` loads either, rewriting a plain mesh as a GSO-layout OBJ in a cache folder (the one form
the renderer reads). A mesh that cannot be read, has no faces or names a texture that is not there raises
:class:`AssetError` with the reason.
"""
from __future__ import annotations

import functools
import hashlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..geometry.cameras import ZUP_TO_YUP as _ZUP_TO_YUP

#: rotation taking GSO's Z-up coordinates to our Y-up world
ZUP_TO_YUP = np.array(_ZUP_TO_YUP)
METRIC_SCALE = 2.0  # metric space = render space x 2 ([-1, 1]^3)
THUMBNAIL = "thumbnails/0.jpg"  # GSO's first product shot (no camera)
MESH_SUFFIXES = (".obj", ".glb", ".gltf")  # plain mesh files an asset folder may hold
GSO, MESH = "gso", "mesh"  # the two kinds of asset


class AssetError(ValueError):
    """An asset that cannot be rendered (unreadable, empty, missing texture); the message says why."""


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
    colour: tuple[float, float, float] = (0.7, 0.7, 0.7)  # untextured meshes: the mtl's Kd (the renderer's flat colour)

    def surface_points(self, n: int, seed: int) -> np.ndarray:
        """n points uniformly by area, metric space ([-1, 1]^3)."""
        from ..metrics.geometry import sample_surface

        return sample_surface(self.vertices * METRIC_SCALE, self.faces, n, seed)


def _open_fs(url: str):
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


def _is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


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


@functools.cache
def process_cache() -> Path:
    """One temporary folder per process for copies of remote assets when the caller gives no cache folder,
    made on first use and removed at exit (never one folder per object)."""
    import atexit
    import shutil

    folder = Path(tempfile.mkdtemp(prefix="mvboost-assets-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _localise(root: str, name: str, cache: Path | None) -> Path:
    """A local folder with the object's mesh, material and texture (copied when the URL is remote, into
    ``cache`` or :func:`process_cache`)."""
    fs, path = _open_fs(root)
    if _is_local(fs):
        local = Path(path) / name
        if local.is_dir():
            return local
    dest = (cache or process_cache()) / name
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


def mtl_colour(folder: Path) -> tuple[float, float, float]:
    """The diffuse colour (``Kd``) of the object's mtl, (0.7, 0.7, 0.7) when it has none."""
    mtl = folder / "meshes" / "model.mtl"
    if mtl.is_file():
        for line in mtl.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == "Kd":
                try:
                    return tuple(float(x) for x in parts[1:])  # type: ignore[return-value]
                except ValueError:
                    break
    return (0.7, 0.7, 0.7)


def load_object(root: str, name: str, cache: Path | None = None, z_up: bool = True) -> GSOObject:
    """Load, map to Y-up and normalise to render space. ``z_up=False`` reads the mesh as already Y-up
    (the deliberate mistake the frame check must catch)."""
    import trimesh

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
    texture = texture if uv is not None else None
    return GSOObject(name, folder, verts, np.asarray(mesh.faces), None if uv is None else np.asarray(uv, np.float64),
                     texture, transform, thumb if thumb.is_file() else None,
                     mtl_colour(folder) if texture is None else (1.0, 1.0, 1.0))


def list_assets(root: str) -> list[tuple[str, str]]:
    """(name, kind) of every asset under ``root``, sorted by name: GSO-layout folders (kind ``gso``, named by
    the folder) and plain mesh files (kind ``mesh``, named by the file name with its suffix)."""
    fs, path = _open_fs(root)
    if not fs.isdir(path):
        raise FileNotFoundError(f"asset folder not found: {root}")
    found = []
    for entry in fs.ls(path, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("."):
            continue
        if entry["type"] == "directory" and fs.exists(f"{path}/{name}/meshes/model.obj"):
            found.append((name, GSO))
        elif entry["type"] == "file" and name.lower().endswith(MESH_SUFFIXES):
            found.append((name, MESH))
    return sorted(found)


def asset_key(name: str) -> str:
    """A sample key for an asset name: readable, dot- and slash-free, unique (a hash of the exact name)."""
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:48]
    return f"a{readable}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def write_obj(folder: Path, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None,
              texture: np.ndarray | None, colour=(0.7, 0.7, 0.7)) -> Path:
    """``folder/meshes/model.obj`` + ``model.mtl`` (+ ``materials/textures/texture.png``, which the mtl names
    relative to ``meshes/`` as GSO does) for a mesh given as arrays; untextured meshes get a flat ``colour``."""
    from PIL import Image

    (folder / "meshes").mkdir(parents=True, exist_ok=True)
    textured = uv is not None and texture is not None
    lines = ["mtllib model.mtl", "usemtl material_0"]
    lines += [f"v {a:.6f} {b:.6f} {c:.6f}" for a, b, c in vertices]
    if textured:
        lines += [f"vt {a:.6f} {b:.6f}" for a, b in uv]
        lines += [f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}" for a, b, c in faces]
    else:
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    (folder / "meshes" / "model.obj").write_text("\n".join(lines) + "\n")
    kd = "1 1 1" if textured else " ".join(f"{c:.3f}" for c in colour)
    (folder / "meshes" / "model.mtl").write_text(f"newmtl material_0\nKa 1 1 1\nKd {kd}\n"
                                                 + ("map_Kd texture.png\n" if textured else ""))
    if textured:
        (folder / "materials" / "textures").mkdir(parents=True, exist_ok=True)
        Image.fromarray(texture).save(folder / "materials" / "textures" / "texture.png")
    return folder


def _fetch_mesh_file(root: str, name: str, cache: Path) -> Path:
    """A local copy of a plain mesh file; an OBJ brings its mtl files and the textures they name."""
    fs, path = _open_fs(root)
    if _is_local(fs):
        return Path(path) / name
    dest = cache / "files" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    fs.get(f"{path}/{name}", str(dest))
    if name.lower().endswith(".obj"):
        for line in dest.read_text(errors="replace").splitlines():
            if line.startswith("mtllib "):
                mtl = line.split(maxsplit=1)[1].strip()
                if fs.exists(f"{path}/{mtl}"):
                    fs.get(f"{path}/{mtl}", str(dest.parent / mtl))
                    for ml in (dest.parent / mtl).read_text(errors="replace").splitlines():
                        if ml.strip().startswith("map_Kd "):
                            tex = ml.strip().split(maxsplit=1)[1].strip()
                            if fs.exists(f"{path}/{tex}"):
                                (dest.parent / tex).parent.mkdir(parents=True, exist_ok=True)
                                fs.get(f"{path}/{tex}", str(dest.parent / tex))
    return dest


def _mesh_texture(mesh) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(uv, texture RGB uint8) of a trimesh mesh; (None, None) when it has no texture coordinates. UVs whose
    material has no image raise :class:`AssetError` (the texture the mesh names is missing)."""
    visual = mesh.visual
    uv = getattr(visual, "uv", None)
    if uv is None or len(uv) == 0:
        return None, None
    material = getattr(visual, "material", None)
    image = getattr(material, "image", None) or getattr(material, "baseColorTexture", None)
    if image is None:
        raise AssetError("missing texture: the mesh has texture coordinates but its texture image was not found")
    return np.asarray(uv, np.float64), np.asarray(image.convert("RGB"), np.uint8)


def load_asset(root: str, name: str, kind: str, cache: Path | None = None) -> GSOObject:
    """Load one asset of :func:`list_assets` as a render-space :class:`GSOObject`; :class:`AssetError` says why
    it cannot be (unreadable mesh, no faces, missing texture)."""
    import logging

    import trimesh

    logging.getLogger("trimesh").setLevel(logging.ERROR)
    if kind == GSO:
        try:
            obj = load_object(root, name, cache)
        except (FileNotFoundError, ValueError) as e:  # no meshes/model.obj, no faces: the reason without the name
            raise AssetError(str(e).removeprefix(f"{name}: ")) from None
        except Exception as e:  # noqa: BLE001 - a parser's error is the asset's reason
            raise AssetError(f"unreadable mesh ({type(e).__name__}: {str(e)[:200]})") from None
        if obj.uv is not None and obj.texture is None:
            raise AssetError("missing texture: the mesh has texture coordinates but neither the mtl's map_Kd nor "
                             "materials/textures/texture.png exists")
        return obj
    if kind != MESH:
        raise ValueError(f"unknown asset kind {kind!r}")
    cache = cache or process_cache()
    try:
        mesh = trimesh.load(_fetch_mesh_file(root, name, cache), force="mesh", process=False)
    except Exception as e:  # noqa: BLE001 - a parser's error is the asset's reason
        raise AssetError(f"unreadable mesh ({type(e).__name__}: {str(e)[:200]})") from None
    if not hasattr(mesh, "faces") or len(mesh.faces) == 0:
        raise AssetError("empty mesh: no faces")
    uv, texture = _mesh_texture(mesh)
    folder_name = asset_key(name)
    write_obj(cache / folder_name, np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces), uv, texture)
    obj = load_object(str(cache), folder_name, cache, z_up=False)
    obj.name = name
    return obj


def surface_gaussians(obj: GSOObject, n: int = 20000, seed: int = 0, scale: float = 0.007):
    """The asset-library oracle: ``n`` small opaque Gaussians on the object's surface (render space, uniform by
    area, fixed seed) with the texture's colour at each sample's UV (the flat colour of an untextured mesh). What
    a perfect reconstruction would give; the evaluation's and the exports' oracle."""
    import torch
    import trimesh
    from PIL import Image

    from ..gaussians import Gaussians

    m = trimesh.Trimesh(obj.vertices, obj.faces, process=False)
    pts, fidx = trimesh.sample.sample_surface(m, n, seed=seed)
    if obj.uv is not None and obj.texture is not None:
        bary = trimesh.triangles.points_to_barycentric(m.triangles[fidx], pts)
        uv = (obj.uv[obj.faces[fidx]] * bary[..., None]).sum(1)
        tex = np.asarray(Image.open(obj.texture).convert("RGB")).astype(np.float32) / 255
        h, w = tex.shape[:2]
        x = np.clip((uv[:, 0] % 1) * (w - 1), 0, w - 1).round().astype(int)
        y = np.clip((1 - uv[:, 1] % 1) * (h - 1), 0, h - 1).round().astype(int)
        colours = tex[y, x]
    else:
        colours = np.tile(np.asarray(obj.colour, np.float32), (n, 1))
    q = torch.zeros(n, 4)
    q[:, 0] = 1
    return Gaussians(torch.tensor(pts, dtype=torch.float32)[None], torch.full((1, n), 0.95),
                     torch.full((1, n, 3), scale), q[None], torch.tensor(colours, dtype=torch.float32)[None])
