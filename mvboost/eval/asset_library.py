"""A two-domain asset library in GSO layout from what packages ship: ``pybullet_data/random_urdfs`` holds
1,000 procedural meshes (``NNN/NNN.obj``), dressed here with deterministic procedural textures.

Domain A and domain B differ visibly, in texture family and in proportions:

* ``A``: the meshes as shipped, with smooth hue bands (low-frequency sinusoids);
* ``B``: the meshes stretched 1.6x along their up axis, with a fine two-colour checker and dots.

Each domain's objects are split into disjoint train and held-out lists by a seeded shuffle; the lists and
their sha256 are written to ``<root>/splits.json`` (and one ``<domain>_<part>.txt`` per list, the format
``--split`` reads). Objects are written once (a rerun keeps what is there) with their thumbnails, so the
evaluation job reads them like GSO. This is the asset library of the boost experiment (bench/boost_experiment.py).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from ..assets.gso import THUMBNAIL
from ..io.codec import to_uint8
from .fixtures import _spherical_uv, write_gso_object, write_thumbnail

DOMAINS = ("A", "B")
STRETCH = {"A": 1.0, "B": 1.6}  # along the up axis (Y in our frame)


def domain_texture(domain: str, seed: int, size: int = 128) -> np.ndarray:
    """Deterministic texture of a domain's family, varied by ``seed`` (colours, frequencies, phases)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    if domain == "A":  # smooth hue bands
        f = rng.uniform(1.0, 2.5, size=3)
        ph = rng.uniform(0, 2 * np.pi, size=3)
        img = np.stack([0.5 + 0.45 * np.sin(2 * np.pi * (f[i] * (x + 0.3 * y)) + ph[i]) for i in range(3)], -1)
    elif domain == "B":  # fine two-colour checker with dots
        c0, c1 = rng.uniform(0.05, 0.95, size=(2, 3))
        n = int(rng.integers(8, 14))
        checker = ((np.floor(x * n) + np.floor(y * n)) % 2)[..., None]
        img = c0 * checker + c1 * (1 - checker)
        dots = (((x * n * 2) % 1 - 0.5) ** 2 + ((y * n * 2) % 1 - 0.5) ** 2) < 0.06
        img = np.where(dots[..., None], 1.0 - img, img)
    else:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    return to_uint8(img)


def _mesh(index: int):
    import pybullet_data
    import trimesh

    path = Path(pybullet_data.getDataPath()) / "random_urdfs" / f"{index:03d}" / f"{index:03d}.obj"
    m = trimesh.load(path, force="mesh", process=False)
    return np.asarray(m.vertices, np.float64), np.asarray(m.faces)


def object_name(domain: str, index: int) -> str:
    return f"{domain.lower()}{index:03d}"


def build_asset_library(root: Path, per_domain: int = 40, held_out: int = 10, seed: int = 0,
                        thumbnails: bool = True) -> dict:
    """Write ``per_domain`` objects of each domain under ``root`` (disjoint random_urdfs meshes per domain)
    and the train/held-out split; returns the split record (also in ``root/splits.json``)."""
    if not 0 < held_out < per_domain or 2 * per_domain > 1000:
        raise ValueError(f"need 0 < held_out < per_domain and 2 x per_domain <= 1000, got {held_out}, {per_domain}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(1000)
    record: dict = {"source": "pybullet_data/random_urdfs", "seed": seed, "stretch": STRETCH, "domains": {}}
    for d, domain in enumerate(DOMAINS):
        indices = sorted(int(i) for i in order[d * per_domain:(d + 1) * per_domain])  # disjoint meshes per domain
        names = []
        for index in indices:
            name = object_name(domain, index)
            names.append(name)
            dest = root / name
            if not (dest / "meshes" / "model.obj").is_file():
                v, f = _mesh(index)
                v = (v - v.mean(0)) * np.array([1.0, STRETCH[domain], 1.0])
                tmp = root / f".{name}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                write_gso_object(tmp, v, f, _spherical_uv(v), domain_texture(domain, seed * 7919 + index), 0.2)
                tmp.rename(dest)
            if thumbnails and not (dest / THUMBNAIL).is_file():
                write_thumbnail(root, name)
        shuffled = [names[i] for i in np.random.default_rng(seed + d + 1).permutation(len(names))]
        parts = {"train": sorted(shuffled[held_out:]), "held_out": sorted(shuffled[:held_out])}
        record["domains"][domain] = {}
        for part, items in parts.items():
            text = "\n".join(items) + "\n"
            (root / f"{domain}_{part}.txt").write_text(text)
            record["domains"][domain][part] = {"objects": items, "sha256": hashlib.sha256(text.encode()).hexdigest()}
    (root / "splits.json").write_text(json.dumps(record, indent=1))
    return record
