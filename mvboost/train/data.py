"""Training data: the generation job's WebDataset shards, streamed per worker.

A source is either the job's output folder or a brace pattern of tar URLs. From a folder, shards are
listed from their manifests alone (small files): a tar without a manifest (not committed), an
unreadable or invalid manifest and a shard with no accepted sample are reported with the reason and
skipped, never silently. Worker ``rank`` of ``world`` reads shards ``rank::world`` and verifies
each one it reads, once, against its manifest (size + streaming sha256) before using it; a shard that
fails is reported and skipped. Each sample gives LGM's inputs (Era3D colour views 0,2,3,4 = C^pi) and
the pseudo ground truth (the 6 refined views C-up^pi) with an alpha target and the cameras used to
render and refine. Member names and decoding come from :mod:`mvboost.io.sample`. With ``target="views"``
the targets are the raw Era3D views C^pi instead (the no-refinement ablation: LGM learns its own inputs),
their alpha from the Era3D normal maps of the same pass.

The alpha target (:func:`target_alpha`), best source first: the true alpha where the shard has it
(``alpha.png``: samples rendered from 3D assets); else the refined normal maps, where the background is
white, (1, 1, 1) = a vector of length sqrt(3) that no unit normal has, so a white object stays opaque;
else the refined colours matted as the input stage mattes (white matting: a distance-from-white
threshold, the largest component, holes filled), so a white object enclosed by its darker outline stays
opaque and a faint haze away from the object stays transparent.
"""
from __future__ import annotations

import io
import logging

import numpy as np
import torch

from ..geometry.cameras import ERA3D_TO_LGM_VIEWS
from ..io.reader import ShardDataError, ShardList, iter_samples, list_shards, verify_shard_url
from ..io.sample import INPUT, META, VIEW_MEMBERS, decode_alpha, decode_cameras, decode_meta, decode_views
from ..io.shards import ShardManifest

__all__ = ["ShardDataError", "ShardList", "ShardStream", "decode_sample", "foreground_mask", "list_shards"]

log = logging.getLogger(__name__)


def foreground_mask(img: np.ndarray, threshold: float = 0.98) -> np.ndarray:
    """Soft mask of non-white pixels (the refined views have a white background). Not the training target:
    a white object is transparent to it and a light haze opaque (see :func:`target_alpha`)."""
    dist = 1.0 - img.min(axis=-1)
    return np.clip(dist / (1.0 - threshold), 0.0, 1.0)


def normals_alpha(normals: np.ndarray) -> np.ndarray:
    """(V, H, W, 3) normal maps in [0, 1] composited on white -> (V, H, W) alpha: 1 for a unit normal
    (length 1 after 2c - 1), 0 for the white background (length sqrt(3)), linear between (edges)."""
    length = np.linalg.norm(normals.astype(np.float64) * 2.0 - 1.0, axis=-1)
    return np.clip((np.sqrt(3.0) - length) / (np.sqrt(3.0) - 1.0) * 1.5, 0.0, 1.0).astype(np.float32)


def matted_alpha(views: np.ndarray, threshold: int = 16) -> np.ndarray:
    """(V, H, W, 3) colours in [0, 1] on white -> (V, H, W) alpha by the input stage's white matting
    (:func:`mvboost.stages.matting.white_matte_alpha`)."""
    from ..stages.matting import white_matte_alpha

    return np.stack([white_matte_alpha(np.round(img * 255).astype(np.uint8), threshold) for img in views]
                    ).astype(np.float32) / 255.0


#: what a sample is trained towards (``data.target``) -> (the colour member, the normal member of the same pass)
TARGETS = {"refined": ("refined", "refined_normals"), "views": ("views", "normals")}


def target_alpha(fields: dict, refined: np.ndarray, normals: str = "refined_normals") -> np.ndarray:
    """(V, H, W) alpha target of a sample (the module docstring says which source wins)."""
    if VIEW_MEMBERS["alpha"] in fields:
        return decode_alpha(fields, VIEW_MEMBERS["alpha"])
    if VIEW_MEMBERS[normals] in fields:
        return normals_alpha(decode_views(fields, VIEW_MEMBERS[normals]))
    return matted_alpha(refined)


def input_rgba(fields: dict) -> np.ndarray | None:
    """The sample's input view (``input.png``) as RGBA uint8 (H, W, 4); opaque if it has no alpha; None if absent."""
    if INPUT not in fields:
        return None
    from PIL import Image

    return np.array(Image.open(io.BytesIO(fields[INPUT])).convert("RGBA"))


def decode_sample(fields: dict, target: str = "refined") -> dict:
    colour, normals = TARGETS[target]
    views = decode_views(fields, VIEW_MEMBERS["views"])
    refined = views if colour == "views" else decode_views(fields, VIEW_MEMBERS[colour])
    cams = decode_cameras(fields)
    return {
        "inputs": torch.from_numpy(views[list(ERA3D_TO_LGM_VIEWS)]).permute(0, 3, 1, 2),  # (4,3,H,W)
        "target": torch.from_numpy(refined).permute(0, 3, 1, 2),  # (6,3,H,W)
        "mask": torch.from_numpy(target_alpha(fields, refined, normals))[:, None],  # (6,1,H,W)
        "cameras": cams,
        "input_rgba": input_rgba(fields),  # (H,W,4) uint8: OpenLRM's single input
        # an asset sample's input.png is its front target view (same framing); the chain's is the matted input
        "input_is_front_view": META in fields and "asset" in decode_meta(fields),
    }


class ShardStream:
    """Infinite, deterministic stream of decoded samples over this worker's shards, epoch after epoch.

    With ``seed`` set, shuffled reproducibly: the shard order is permuted anew each epoch
    (``numpy.random.default_rng((seed, epoch))``, the same on every worker, so workers that share shards by
    sample stay disjoint) and samples pass through a shuffle buffer of ``shuffle_buffer`` samples
    (``default_rng((seed, rank))``). The stream is a pure function of (shards, seed, rank, world): a rerun gives
    the same order, and a resume that skips the samples earlier steps consumed continues it exactly."""

    def __init__(self, shards: list[str], rank: int = 0, world: int = 1, storage_options: dict | None = None,
                 manifests: dict[str, ShardManifest] | None = None, seed: int | None = None,
                 shuffle_buffer: int = 0, target: str = "refined"):
        if target not in TARGETS:
            raise ValueError(f"data.target must be one of {sorted(TARGETS)}, got {target!r}")
        self.target, self.member = target, VIEW_MEMBERS[TARGETS[target][0]]
        mine = shards[rank::world]
        if not mine:  # fewer shards than workers: share them round-robin by sample instead
            mine, self.sample_stride, self.sample_offset = shards, world, rank
        else:
            self.sample_stride, self.sample_offset = 1, 0
        self.shards, self.opts = mine, storage_options
        self.seed, self.buffer, self.rank = seed, max(0, int(shuffle_buffer)), rank
        self.manifests = manifests or {}
        self.verified: dict[str, str | None] = {}  # url -> None (good) or the reason it was skipped

    def usable(self, url: str) -> bool:
        """Verify ``url`` against its manifest the first time this worker reads it (only its own shards)."""
        if url not in self.manifests:
            return True
        if url not in self.verified:
            self.verified[url] = verify_shard_url(url, self.manifests[url], self.opts)
            if self.verified[url]:
                log.warning("skipping shard %s: %s", url, self.verified[url])
        return self.verified[url] is None

    def __iter__(self):
        samples = self._ordered()
        if self.seed is None or self.buffer <= 1:
            yield from samples
            return
        rng = np.random.default_rng((self.seed, self.rank))
        buf = []
        for item in samples:  # the stream is infinite: the buffer never drains
            if len(buf) < self.buffer:
                buf.append(item)
                continue
            i = int(rng.integers(len(buf)))
            buf[i], item = item, buf[i]
            yield item

    def epoch_order(self, epoch: int) -> list[str]:
        """This worker's shards in the order of ``epoch`` (as listed without a seed)."""
        if self.seed is None:
            return list(self.shards)
        perm = np.random.default_rng((self.seed, epoch)).permutation(len(self.shards))
        return [self.shards[i] for i in perm]

    def _ordered(self):
        epoch = 0
        while True:
            n, used = 0, 0
            for url in self.epoch_order(epoch):
                if not self.usable(url):
                    continue
                used += 1
                for key, fields in iter_samples(url, self.opts):
                    if n % self.sample_stride == self.sample_offset and self.member in fields:
                        yield key, fields
                    n += 1
            if not used:
                bad = "; ".join(f"{u.rsplit('/', 1)[-1]}: {w}" for u, w in self.verified.items() if w)
                raise ShardDataError(f"none of this worker's {len(self.shards)} shard(s) is usable ({bad})")
            epoch += 1

    def batches(self, batch_size: int, skip_batches: int = 0):
        return batches_of(iter(self), batch_size, skip_batches, self.target)


def batches_of(samples, batch_size: int, skip_batches: int = 0, target: str = "refined"):
    """Decoded training batches from an iterator of (key, fields[, …]) samples; ``skip_batches``: resume
    after what earlier steps consumed (skipped samples are not decoded)."""
    for _ in range(skip_batches * batch_size):
        next(samples)
    while True:
        items = [decode_sample(next(samples)[1], target) for _ in range(batch_size)]
        yield {"inputs": torch.stack([x["inputs"] for x in items]),
               "target": torch.stack([x["target"] for x in items]),
               "mask": torch.stack([x["mask"] for x in items]),
               "cameras": [x["cameras"] for x in items],
               "input_rgba": [x["input_rgba"] for x in items],
               "input_is_front_view": [x["input_is_front_view"] for x in items]}


class MixedStream:
    """Several shard sources sampled by weight, reproducibly: draw ``i`` takes its next sample from source
    ``k`` with probability ``weights[k]`` (``numpy.random.default_rng(seed)``, the same on a rerun and after a
    resume, which replays the draws it skips). ``counts`` tells how many samples each source gave."""

    def __init__(self, streams: list[ShardStream], weights: list[float], seed: int = 0):
        if len(streams) != len(weights) or not streams:
            raise ValueError("one weight per source, at least one source")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"source weights must be >= 0 with a positive sum, got {weights}")
        self.streams, self.p, self.seed = streams, w / w.sum(), seed
        self.counts = [0] * len(streams)

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        its = [iter(s) for s in self.streams]
        while True:
            k = int(rng.choice(len(its), p=self.p))
            key, fields = next(its[k])
            self.counts[k] += 1
            yield key, fields, k

    def batches(self, batch_size: int, skip_batches: int = 0):
        return batches_of(iter(self), batch_size, skip_batches, self.streams[0].target)
