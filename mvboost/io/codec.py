"""Encoding of per-item payloads: arrays travel between stages as ``.npy`` bytes (Arrow/Ray friendly),
images are stored in shards as PNG, view sets as one horizontally tiled PNG per set."""
from __future__ import annotations

import io

import numpy as np


def encode_array(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def decode_array(data: bytes) -> np.ndarray:
    if data is None:
        raise ValueError("no array stored (None)")
    return np.load(io.BytesIO(bytes(data)), allow_pickle=False)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float in [0,1] (or uint8) HxWxC -> uint8."""
    if img.dtype == np.uint8:
        return img
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def encode_png(img: np.ndarray) -> bytes:
    """HxW, HxWx3 or HxWx4 (uint8 or float in [0,1]) -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def tile_views(views: np.ndarray) -> np.ndarray:
    """(V,H,W,C) -> (H, V*W, C): views side by side, view 0 on the left."""
    return np.concatenate(list(views), axis=1)


def untile_views(img: np.ndarray, num_views: int) -> np.ndarray:
    """(H, V*W, C) -> (V,H,W,C)."""
    vw = img.shape[1]
    if vw % num_views:
        raise ValueError(f"image width {vw} is not a multiple of {num_views} views")
    return np.stack(np.split(img, num_views, axis=1))
