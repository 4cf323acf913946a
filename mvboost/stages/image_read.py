"""The first stage of a single-view image dataset (``prompts.source: images``): read and decode one image.

Reads the file (or the member of an img2dataset shard) the item names, keeps an alpha channel (matting then uses
it as the mask), and hands the pixels on as ``image``, as text-to-image does for a prompt. An image that cannot
be read or decoded, or that is smaller than ``min_size`` on its short side, is a recorded reject whose reason
names the file; a storage failure is an infrastructure error (the item goes through again).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..io.codec import encode_array
from ..io.images import read_image
from .base import Reject, Resources, Stage


@dataclass
class ImageReadConfig:
    min_size: int = 64  # px on the short side; smaller images are rejected
    storage_options: dict = field(default_factory=dict)  # fsspec options for the images ({}: prompts.storage_options)
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1.0, batch_size=16))


class ImageReadStage(Stage):
    name = "image_read"
    Config = ImageReadConfig
    inputs = ("image_url", "image_member", "image_name")
    outputs = ("image",)
    uses_actor = False
    infra_errors = (OSError,)  # the storage failed (not a missing file): the item goes through again

    def process(self, rows):
        return [self._one(r) for r in rows]

    def _one(self, row):
        name = row["image_name"]
        try:
            img = read_image(row["image_url"], row["image_member"] or "", self.config.storage_options)
        except FileNotFoundError:
            return Reject(f"image missing [{name}]")
        except ValueError as e:
            return Reject(f"unreadable image: {e} [{name}]")
        h, w = img.shape[:2]
        if min(h, w) < self.config.min_size:
            return Reject(f"image too small: {w}x{h} px, min {self.config.min_size} on the short side [{name}]")
        return {"image": encode_array(img)}


__all__ = ["ImageReadStage", "ImageReadConfig"]
