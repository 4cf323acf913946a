"""Single-view image datasets as a source: a folder (or fsspec URL) of images, and img2dataset-style
WebDataset shards (``.tar`` files whose samples hold an image member — ``.jpg``/``.png``/``.webp`` — with an
optional ``.txt`` caption or ``.json`` with a ``caption``).

:func:`list_images` is the driver's side: it names every image once, in a stable order (sorted by name), without
decoding any; :func:`read_image` is the worker's: it reads one and decodes it, keeping an alpha channel.
"""
from __future__ import annotations

import io
import json
import posixpath
import tarfile
from dataclasses import dataclass

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_SUFFIXES = (".txt", ".json")


class ImageSourceError(ValueError):
    """The source itself cannot be listed (not found, not a folder of images or shards)."""


@dataclass(frozen=True)
class ImageRef:
    name: str  # relative to the source: "photos/a.png", or "00000.tar/000000012" for a shard's sample
    url: str  # the file to open: the image, or the shard holding it
    member: str = ""  # the image's member name inside the shard ("" for a plain file)
    caption: str = ""


def _suffix(name: str) -> str:
    return posixpath.splitext(name)[1].lower()


def _shard_samples(fs, path: str, rel: str) -> list[ImageRef]:
    """The samples of one WebDataset shard that hold an image (key = member name up to its first dot)."""
    members: dict[str, dict[str, str]] = {}
    captions: dict[str, str] = {}
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                base = posixpath.basename(m.name)
                key = posixpath.join(posixpath.dirname(m.name), base.split(".", 1)[0])
                ext = "." + base.split(".", 1)[1].lower() if "." in base else ""
                if ext in IMAGE_SUFFIXES:
                    members.setdefault(key, {})["image"] = m.name
                elif ext in CAPTION_SUFFIXES and key not in captions:
                    data = tf.extractfile(m).read(1 << 16)
                    captions[key] = _caption(data, ext)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ImageSourceError(f"shard {rel}: not a readable tar ({type(e).__name__}: {e})") from None
    return [ImageRef(f"{rel}/{key}", path, m["image"], captions.get(key, ""))
            for key, m in sorted(members.items())]


def _caption(data: bytes, ext: str) -> str:
    text = data.decode("utf-8", errors="replace")
    if ext == ".json":
        try:
            doc = json.loads(text)
            return str(doc.get("caption") or doc.get("text") or "") if isinstance(doc, dict) else ""
        except ValueError:
            return ""
    return text.strip()


def list_images(url: str, storage_options: dict | None = None) -> list[ImageRef]:
    """Every image under ``url`` (a folder, searched recursively, or one ``.tar`` shard), sorted by name. A folder
    may mix plain images and shards. Nothing is decoded."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ValueError, ImportError) as e:
        raise ImageSourceError(f"prompts.images {url}: {type(e).__name__}: {e}") from None
    root = root.rstrip("/")
    proto = url.split("://", 1)[0] + "://" if "://" in url else ""

    def full(path: str) -> str:
        return proto + path if proto and not path.startswith(proto) else path

    if not fs.exists(root):
        raise ImageSourceError(f"prompts.images not found: {url}")
    if fs.isfile(root):
        if _suffix(root) != ".tar":
            raise ImageSourceError(f"prompts.images {url}: a folder of images or a .tar shard, not a single file")
        return _shard_samples(fs, full(root), posixpath.basename(root))
    refs: list[ImageRef] = []
    for path in sorted(fs.find(root)):
        rel = path[len(root):].lstrip("/")
        if posixpath.basename(rel).startswith("."):
            continue
        if _suffix(rel) in IMAGE_SUFFIXES:
            refs.append(ImageRef(rel, full(path)))
        elif _suffix(rel) == ".tar":
            refs.extend(_shard_samples(fs, full(path), rel))
    return sorted(refs, key=lambda r: r.name)


def read_image(url: str, member: str = "", storage_options: dict | None = None) -> np.ndarray:
    """One image as uint8 HxWx3, or HxWx4 when it has an alpha channel (RGBA, LA, a palette with transparency).
    ``ValueError`` (with the reason) when the bytes are no readable image or the shard has no such member; the
    storage's own errors (``FileNotFoundError``, a connection error) propagate as they are."""
    import fsspec
    from PIL import Image, UnidentifiedImageError

    with fsspec.open(url, "rb", **(storage_options or {})) as f:
        if member:
            try:
                with tarfile.open(fileobj=f, mode="r|*") as tf:
                    data = next((tf.extractfile(m).read() for m in tf if m.name == member), None)
            except (tarfile.TarError, EOFError) as e:
                raise ValueError(f"shard: {type(e).__name__}: {str(e)[:200]}") from None
            if data is None:
                raise ValueError(f"no member {member} in the shard")
        else:
            data = f.read()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            return np.asarray(im.convert("RGBA" if alpha else "RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{type(e).__name__}: {str(e)[:200]}") from None


FIXTURES_VERSION = "v1"


def fixture_images(folder) -> str:
    """A small image dataset for the smoke runs and tests, written once into ``folder``: photos that scikit-image
    ships (JPEG, PNG, WebP), an object with its own alpha (RGBA PNG) and an img2dataset-style shard with a caption
    (``shard-00000.tar``: ``000000000.jpg`` + ``000000000.txt``)."""
    from pathlib import Path

    from PIL import Image
    from skimage import data

    folder = Path(folder)
    done = folder / ".complete"
    if done.is_file():
        return str(folder)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()).save(folder / "astronaut.jpg", quality=90)
    Image.fromarray(data.chelsea()).save(folder / "chelsea.png")
    (folder / "photos").mkdir(exist_ok=True)
    Image.fromarray(data.coffee()).save(folder / "photos" / "coffee.webp", quality=90)
    yy, xx = np.mgrid[:256, :256]
    disc = ((yy - 128) ** 2 + (xx - 128) ** 2 < 70 ** 2).astype(np.uint8) * 255
    rgba = np.dstack([np.full((256, 256), 200, np.uint8), xx.astype(np.uint8), np.full((256, 256), 60, np.uint8), disc])
    Image.fromarray(rgba, "RGBA").save(folder / "object_rgba.png")
    buf = io.BytesIO()
    Image.fromarray(data.rocket()).save(buf, format="JPEG", quality=90)
    with tarfile.open(folder / "shard-00000.tar", "w") as tf:
        for name, payload in (("000000000.jpg", buf.getvalue()), ("000000000.txt", b"a rocket on its launch pad")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    done.write_text(FIXTURES_VERSION)
    return str(folder)
