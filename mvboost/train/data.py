"""Training data: the generation job's WebDataset shards, streamed per worker.

A source is either the job's output folder (shards are listed from their manifests and each shard is
verified against its manifest's size and sha256; a shard that fails is reported and skipped, never
silently) or a brace pattern of tar URLs. Worker ``rank`` of ``world`` reads shards ``rank::world``.
Each sample gives LGM's inputs (Era3D colour views 0,2,3,4 = C^pi) and the pseudo ground truth
(the 6 refined views C-up^pi) with a foreground mask and the cameras used to render and refine.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tarfile
from dataclasses import dataclass

import numpy as np
import torch

from ..geometry.cameras import ERA3D_TO_LGM_VIEWS, Cameras
from ..pipeline.codec import decode_png, untile_views

log = logging.getLogger(__name__)
NUM_VIEWS = 6


@dataclass
class ShardList:
    urls: list[str]
    skipped: list[tuple[str, str]]  # (url, reason)


def list_shards(source: str, storage_options: dict | None = None, verify: bool = True) -> ShardList:
    import fsspec
    from braceexpand import braceexpand

    if "{" in source:
        return ShardList(sorted(braceexpand(source)), [])
    fs, root = fsspec.core.url_to_fs(source, **(storage_options or {}))
    if root.endswith(".tar"):
        return ShardList([source], [])
    proto = source.split("://", 1)[0] + "://" if "://" in source else ""
    manifests = sorted(p for p in fs.glob(root.rstrip("/") + "/shard-*.json"))
    urls, skipped = [], []
    for m in manifests:
        man = json.loads(fs.cat(m))
        tar = m[: -len(".json")] + ".tar"
        url = proto + tar if proto else tar
        if man.get("samples", 0) == 0:
            skipped.append((url, "no accepted samples"))
            continue
        if verify:
            try:
                data = fs.cat(tar)
            except FileNotFoundError:
                skipped.append((url, "tar missing"))
                continue
            if len(data) != man["bytes"] or hashlib.sha256(data).hexdigest() != man["sha256"]:
                skipped.append((url, "does not match its manifest (size or sha256)"))
                continue
        urls.append(url)
    for url, why in skipped:
        log.warning("skipping shard %s: %s", url, why)
    if not urls:
        raise FileNotFoundError(f"no usable shards under {source} ({len(skipped)} skipped: {skipped[:3]})")
    return ShardList(urls, skipped)


def iter_samples(url: str, storage_options: dict | None = None):
    """(key, {ext: bytes}) for every sample of one tar, in order (members of a sample are adjacent)."""
    import fsspec

    with fsspec.open(url, "rb", **(storage_options or {})) as f:
        with tarfile.open(fileobj=f, mode="r|") as tf:
            key, cur = None, {}
            for m in tf:
                if not m.isfile():
                    continue
                k, ext = m.name.split(".", 1)
                if key is not None and k != key:
                    yield key, cur
                    cur = {}
                key = k
                cur[ext] = tf.extractfile(m).read()
            if key is not None:
                yield key, cur


def foreground_mask(img: np.ndarray, threshold: float = 0.98) -> np.ndarray:
    """Soft mask of non-white pixels (the refined views have a white background)."""
    dist = 1.0 - img.min(axis=-1)
    return np.clip(dist / (1.0 - threshold), 0.0, 1.0)


def decode_sample(fields: dict) -> dict:
    views = untile_views(decode_png(fields["views.png"])[..., :3], NUM_VIEWS).astype(np.float32) / 255.0
    refined = untile_views(decode_png(fields["refined.png"])[..., :3], NUM_VIEWS).astype(np.float32) / 255.0
    cams = Cameras.from_json(json.loads(fields["cameras.json"]))
    return {
        "inputs": torch.from_numpy(views[list(ERA3D_TO_LGM_VIEWS)]).permute(0, 3, 1, 2),  # (4,3,H,W)
        "target": torch.from_numpy(refined).permute(0, 3, 1, 2),  # (6,3,H,W)
        "mask": torch.from_numpy(foreground_mask(refined))[:, None],  # (6,1,H,W)
        "cameras": cams,
    }


class ShardStream:
    """Infinite, deterministic stream of decoded samples over this worker's shards, epoch after epoch."""

    def __init__(self, shards: list[str], rank: int = 0, world: int = 1, storage_options: dict | None = None):
        mine = shards[rank::world]
        if not mine:  # fewer shards than workers: share them round-robin by sample instead
            mine, self.sample_stride, self.sample_offset = shards, world, rank
        else:
            self.sample_stride, self.sample_offset = 1, 0
        self.shards, self.opts = mine, storage_options

    def __iter__(self):
        while True:
            n = 0
            for url in self.shards:
                for key, fields in iter_samples(url, self.opts):
                    if n % self.sample_stride == self.sample_offset and "refined.png" in fields:
                        yield key, fields
                    n += 1

    def batches(self, batch_size: int, skip_batches: int = 0):
        it = iter(self)
        for _ in range(skip_batches * batch_size):  # resume: skip what earlier steps consumed (no decoding)
            next(it)
        while True:
            items = [decode_sample(next(it)[1]) for _ in range(batch_size)]
            yield {"inputs": torch.stack([x["inputs"] for x in items]),
                   "target": torch.stack([x["target"] for x in items]),
                   "mask": torch.stack([x["mask"] for x in items]),
                   "cameras": [x["cameras"] for x in items]}
