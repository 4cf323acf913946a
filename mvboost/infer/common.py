"""What the image-to-3D runners share: inputs (files, folders, URLs), names, results, model records."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_inputs(source: str) -> list[str]:
    """A file, a folder (its images, sorted) or a URL (any fsspec protocol)."""
    if "://" in source and not source.startswith("file://"):
        return [source]
    path = Path(source.removeprefix("file://")).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"input not found: {source}")
    return [str(path)]


def read_image(source: str) -> np.ndarray:
    """(H,W,3|4) uint8. Raises ValueError with the reason for anything that is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    if "://" in source and not source.startswith("file://"):
        import fsspec

        with fsspec.open(source, "rb") as f:
            data = f.read()
    else:
        data = Path(source.removeprefix("file://")).read_bytes()
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"not a readable image: {e}") from None
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        return np.asarray(im.convert("RGBA"))
    return np.asarray(im.convert("RGB"))


def item_name(source: str, taken: set[str]) -> str:
    stem = Path(source.split("?")[0].rstrip("/")).stem or "image"
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80] or "image"
    name, i = stem, 1
    while name in taken:
        i += 1
        name = f"{stem}_{i}"
    taken.add(name)
    return name


def model_record(model: str, revision: str, what: str, adapter: str = "") -> dict:
    """The hub's one model record, with the local folder it resolved to (``path``)."""
    from ..models.hub import model_record as record
    from ..models.hub import resolve

    return {**record(model, revision, what=what, adapter=adapter), "path": str(resolve(model, revision, what=what))}


@dataclass
class Result:
    name: str
    source: str
    folder: Path | None = None
    rejected: str | None = None
    meta: dict = field(default_factory=dict)


def matte_input(matting, r: Result):
    """Read and matte ``r``'s image -> RGBA uint8, or None with ``r.rejected`` set to the reason (input or
    matting); the seconds and the matting method go to ``r.meta``."""
    import time

    from ..stages.base import Reject

    t = time.perf_counter()
    try:
        rgba = matting.matte(read_image(r.source))
    except Reject as e:
        r.rejected = f"matting: {e}"
        return None
    except (ValueError, OSError) as e:
        r.rejected = f"input: {e}"
        return None
    r.meta["seconds"] = {"matting": round(time.perf_counter() - t, 3)}
    r.meta["matting"] = matting.last_method
    return rgba


def write_summary(output: Path, results: list[Result]) -> None:
    """``summary.json`` of a run: images, written, the rejected with their reasons, the folders."""
    (output / "summary.json").write_text(json.dumps({
        "images": len(results), "written": sum(r.rejected is None for r in results),
        "rejected": [{"input": r.source, "reason": r.rejected} for r in results if r.rejected],
        "items": [{"input": r.source, "folder": str(r.folder)} for r in results if r.folder]}, indent=2))
