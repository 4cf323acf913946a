"""GSO evaluation splits (gso300, gso30, all, a shipped or given list file) over a folder of GSO objects. The objects
themselves (layout, loader, frames) are :mod:`mvboost.assets.gso`."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..assets.gso import METRIC_SCALE, THUMBNAIL, ZUP_TO_YUP, GSOObject, find_texture, list_objects, load_object

__all__ = ["METRIC_SCALE", "THUMBNAIL", "ZUP_TO_YUP", "GSOObject", "find_texture", "list_objects", "load_object",
           "SPLITS_DIR", "resolve_split", "gso30"]

SPLITS_DIR = Path(__file__).parent / "splits"


def resolve_split(split: str, names: list[str]) -> tuple[list[str], dict]:
    """gso300 | gso30 | all | a list shipped in ``splits/`` by its name (``smoke``) | a file with one name per line
    -> (names, record with its sha256). A shipped list is found from any working directory."""
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
        if not path.is_file() and (SPLITS_DIR / f"{split}.txt").is_file():
            path = SPLITS_DIR / f"{split}.txt"
        if not path.is_file():
            shipped = ", ".join(sorted(p.stem for p in SPLITS_DIR.glob("*.txt")))
            raise ValueError(f"--split must be gso300, gso30, all, a shipped list ({shipped}) or a list file, "
                             f"got {split!r}")
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
