"""Training data: the generation job's WebDataset shards, streamed per worker.

A source is either the job's output folder or a brace pattern of tar URLs. From a folder, shards are
listed from their manifests alone (small files): a tar without a manifest (not committed), an
unreadable or invalid manifest and a shard with no accepted sample are reported with the reason and
skipped, never silently. Worker ``rank`` of ``world`` reads shards ``rank::world`` and verifies
each one it reads, once, against its manifest (size + streaming sha256) before using it; a shard that
fails is reported and skipped. Each sample gives LGM's inputs (Era3D colour views 0,2,3,4 = C^pi) and
the pseudo ground truth (the 6 refined views C-up^pi) with a foreground mask and the cameras used to
render and refine. Member names and decoding come from :mod:`mvboost.io.sample`.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from ..geometry.cameras import ERA3D_TO_LGM_VIEWS
from ..io.sample import decode_cameras, decode_views, iter_tar

log = logging.getLogger(__name__)


class ShardDataError(FileNotFoundError):
    """No usable shard (every reason listed): deterministic, so not worth retrying."""


@dataclass
class ShardList:
    urls: list[str]
    skipped: list[tuple[str, str]]  # (url, reason)
    expected: dict[str, tuple[int, str]] = field(default_factory=dict)  # url -> (bytes, sha256) from manifests


def list_shards(source: str, storage_options: dict | None = None) -> ShardList:
    import fsspec
    from braceexpand import braceexpand

    if "{" in source:
        return ShardList(sorted(braceexpand(source)), [])
    fs, root = fsspec.core.url_to_fs(source, **(storage_options or {}))
    if root.endswith(".tar"):
        return ShardList([source], [])
    proto = source.split("://", 1)[0] + "://" if "://" in source else ""
    base = root.rstrip("/")
    manifests = sorted(fs.glob(base + "/shard-*.json"))
    tars = sorted(fs.glob(base + "/shard-*.tar"))
    urls, skipped, expected = [], [], {}
    with_manifest = {m[: -len(".json")] for m in manifests}
    for t in tars:
        if t[: -len(".tar")] not in with_manifest:
            skipped.append((proto + t if proto else t, "no manifest: the shard is not committed"))
    for m in manifests:
        tar = m[: -len(".json")] + ".tar"
        url = proto + tar if proto else tar
        try:
            man = json.loads(fs.cat(m))
            size, sha, samples = int(man["bytes"]), str(man["sha256"]), int(man.get("samples", 0))
        except Exception as e:  # noqa: BLE001 - reported with the reason, the other shards go on
            skipped.append((url, f"invalid manifest {m.rsplit('/', 1)[-1]}: {type(e).__name__}: {e}"[:300]))
            continue
        if samples == 0:
            skipped.append((url, "no accepted samples"))
            continue
        urls.append(url)
        expected[url] = (size, sha)
    for url, why in skipped:
        log.warning("skipping shard %s: %s", url, why)
    if not urls:
        reasons = "; ".join(f"{u.rsplit('/', 1)[-1]}: {w}" for u, w in skipped[:5]) or "no shard-*.json manifests"
        raise ShardDataError(f"no usable shards under {source} ({len(skipped)} skipped: {reasons})")
    return ShardList(urls, skipped, expected)


def verify_shard(url: str, expected: tuple[int, str], storage_options: dict | None = None,
                 chunk: int = 8 << 20) -> str | None:
    """None if the tar at ``url`` has the manifest's size and sha256 (read in chunks), else the reason."""
    import fsspec

    h, n = hashlib.sha256(), 0
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            while block := f.read(chunk):
                h.update(block)
                n += len(block)
    except FileNotFoundError:
        return "tar missing"
    if (n, h.hexdigest()) != tuple(expected):
        return "does not match its manifest (size or sha256)"
    return None


def iter_samples(url: str, storage_options: dict | None = None):
    """(key, {member: bytes}) for every sample of one tar, in order."""
    import fsspec

    with fsspec.open(url, "rb", **(storage_options or {})) as f:
        yield from iter_tar(f)


def foreground_mask(img: np.ndarray, threshold: float = 0.98) -> np.ndarray:
    """Soft mask of non-white pixels (the refined views have a white background)."""
    dist = 1.0 - img.min(axis=-1)
    return np.clip(dist / (1.0 - threshold), 0.0, 1.0)


def decode_sample(fields: dict) -> dict:
    views = decode_views(fields, "views.png")
    refined = decode_views(fields, "refined.png")
    cams = decode_cameras(fields)
    return {
        "inputs": torch.from_numpy(views[list(ERA3D_TO_LGM_VIEWS)]).permute(0, 3, 1, 2),  # (4,3,H,W)
        "target": torch.from_numpy(refined).permute(0, 3, 1, 2),  # (6,3,H,W)
        "mask": torch.from_numpy(foreground_mask(refined))[:, None],  # (6,1,H,W)
        "cameras": cams,
    }


class ShardStream:
    """Infinite, deterministic stream of decoded samples over this worker's shards, epoch after epoch."""

    def __init__(self, shards: list[str], rank: int = 0, world: int = 1, storage_options: dict | None = None,
                 expected: dict[str, tuple[int, str]] | None = None):
        mine = shards[rank::world]
        if not mine:  # fewer shards than workers: share them round-robin by sample instead
            mine, self.sample_stride, self.sample_offset = shards, world, rank
        else:
            self.sample_stride, self.sample_offset = 1, 0
        self.shards, self.opts = mine, storage_options
        self.expected = expected or {}
        self.verified: dict[str, str | None] = {}  # url -> None (good) or the reason it was skipped

    def usable(self, url: str) -> bool:
        """Verify ``url`` against its manifest the first time this worker reads it (only its own shards)."""
        if url not in self.expected:
            return True
        if url not in self.verified:
            self.verified[url] = verify_shard(url, self.expected[url], self.opts)
            if self.verified[url]:
                log.warning("skipping shard %s: %s", url, self.verified[url])
        return self.verified[url] is None

    def __iter__(self):
        while True:
            n, used = 0, 0
            for url in self.shards:
                if not self.usable(url):
                    continue
                used += 1
                for key, fields in iter_samples(url, self.opts):
                    if n % self.sample_stride == self.sample_offset and "refined.png" in fields:
                        yield key, fields
                    n += 1
            if not used:
                bad = "; ".join(f"{u.rsplit('/', 1)[-1]}: {w}" for u, w in self.verified.items() if w)
                raise ShardDataError(f"none of this worker's {len(self.shards)} shard(s) is usable ({bad})")

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
