"""GSO-layout fixture objects from real textured meshes that packages ship (pybullet_data: the duck and
the soccer ball with their textures; the teddy and the mug with a procedural texture) plus a procedural
box, written exactly like GSO: Z-up metres with the origin on the base plane, ``meshes/model.obj`` +
``model.mtl`` naming ``texture.png`` next to it (where it is not) and the texture in
``materials/textures/texture.png``. Used by the evaluation smoke config and the tests."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..assets.gso import ZUP_TO_YUP, write_obj

#: name -> (pybullet_data file or None for procedural, source up axis is Y, height in metres)
SOURCES = {
    "duck": ("duck.obj", 0.12),
    "soccer_ball": ("soccerball.obj", 0.22),
    "box": (None, 0.15),
    "teddy": ("teddy2_VHACD_CHs.obj", 0.25),
    "mug": ("urdf/mug.obj", 0.10),
}
SMOKE_OBJECTS = ("duck", "soccer_ball", "box")


def _procedural_texture(size: int = 256, seed: int = 0) -> np.ndarray:
    """A colourful, asymmetric texture (hue gradient, stripes, a checker): pose and colour errors show."""
    y, x = np.mgrid[:size, :size] / size
    r = 0.5 + 0.5 * np.sin(2 * np.pi * x * 3 + seed)
    g = 0.5 + 0.5 * np.cos(2 * np.pi * y * 2)
    b = ((np.floor(x * 8) + np.floor(y * 8)) % 2) * 0.8 + 0.1
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def _spherical_uv(v: np.ndarray) -> np.ndarray:
    c = v - v.mean(0)
    u = 0.5 + np.arctan2(c[:, 0], c[:, 2]) / (2 * np.pi)
    w = 0.5 + np.arcsin(np.clip(c[:, 1] / (np.linalg.norm(c, axis=1) + 1e-9), -1, 1)) / np.pi
    return np.stack([u, w], -1)


def _box():
    import trimesh

    m = trimesh.creation.box(extents=(1.0, 0.7, 0.5))
    m = m.subdivide().subdivide()
    v = np.asarray(m.vertices)
    uv = np.stack([(v[:, 0] + v[:, 2] + 1) / 2.5, (v[:, 1] + v[:, 2] + 0.85) / 2], -1)  # asymmetric unwrap
    return v, np.asarray(m.faces), uv, _procedural_texture(seed=1)


def _source(name: str):
    import trimesh
    from PIL import Image

    fname, _ = SOURCES[name]
    if fname is None:
        return _box()
    import pybullet_data

    path = Path(pybullet_data.getDataPath()) / fname
    m = trimesh.load(path, force="mesh", process=False)
    v, f = np.asarray(m.vertices, np.float64), np.asarray(m.faces)
    uv = getattr(m.visual, "uv", None)
    image = getattr(getattr(m.visual, "material", None), "image", None)
    if uv is None or image is None:
        return v, f, _spherical_uv(v), _procedural_texture(seed=len(name))
    return v, f, np.asarray(uv, np.float64), np.asarray(Image.fromarray(np.asarray(image)).convert("RGB"))


def write_gso_object(dest: Path, vertices_yup: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture: np.ndarray,
                     height: float) -> Path:
    """Write one object in GSO's layout (Z-up, metres, origin on the base plane, the texture-path quirk)."""
    v = vertices_yup @ np.linalg.inv(ZUP_TO_YUP).T  # our Y-up -> GSO's Z-up
    v = v - np.array([(v[:, 0].min() + v[:, 0].max()) / 2, (v[:, 1].min() + v[:, 1].max()) / 2, v[:, 2].min()])
    v = v * (height / (v[:, 2].max() - v[:, 2].min()))
    write_obj(dest, v, faces, uv, texture)
    (dest / "model.config").write_text("<model><name>fixture</name></model>\n")
    return dest


def write_thumbnail(root: Path, name: str, elevation: float = 20.0, azimuth: float = 35.0) -> Path:
    """``thumbnails/0.jpg`` as GSO has it: a 640x460 product shot on white from a camera nobody records
    (here: above and to the side of the front), JPEG."""
    import io

    import fsspec
    from PIL import Image

    from ..assets.gso import THUMBNAIL, load_object
    from ..assets.render import MeshRenderer
    from ..io.codec import to_uint8
    from ..io.files import write_atomic
    from .gt import eval_cameras
    from .protocol import Protocol

    renderer = MeshRenderer()
    try:
        rgb, _ = renderer.render(load_object(str(root), name), eval_cameras(Protocol(), 460, [(elevation, azimuth)]), 2)
    finally:
        renderer.close()
    canvas = np.full((460, 640, 3), 255, np.uint8)
    canvas[:, 90:550] = to_uint8(rgb[0])
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="JPEG", quality=90)
    out = root / name / THUMBNAIL
    write_atomic(fsspec.filesystem("file"), str(out), buf.getvalue())
    return out


def build_fixtures(root: Path, names=None) -> Path:
    """Write the fixture objects under ``root`` (skipping ones already there) with their thumbnails;
    returns ``root``."""
    from ..assets.gso import THUMBNAIL

    root = Path(root)
    for name in names or SOURCES:
        dest = root / name
        if not (dest / "meshes" / "model.obj").is_file():
            v, f, uv, tex = _source(name)
            tmp = root / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            write_gso_object(tmp, v, f, uv, tex, SOURCES[name][1])
            tmp.rename(dest)
        if not (dest / THUMBNAIL).is_file():
            write_thumbnail(root, name)
    return root


def fixtures_root() -> Path:
    """The fixtures in the model cache (built once per machine): what ``objects: fixtures`` means."""
    from ..models.hub import cache_root

    return build_fixtures(cache_root() / "gso-fixtures")
