"""The training data, assembled in one place for the loop and for the launcher's check before Ray starts: the
sources (``data.sources`` with weights, or ``data.source``), their committed shards (listed from the manifests),
and the stream of batches a rank reads (seeded shuffling, the weighted mix, resumed at a step)."""
from __future__ import annotations

from .config import DataSection, TrainConfig


def data_sources(data: DataSection) -> list[tuple[str, float, dict]]:
    """(url, weight, storage options) of every source: ``data.sources`` if given, else ``data.source``."""
    if not data.sources:
        return [(data.source, 1.0, dict(data.storage_options))]
    out = []
    for i, src in enumerate(data.sources):
        if isinstance(src, str):
            src = {"source": src}
        if not isinstance(src, dict) or not src.get("source"):
            raise ValueError(f"data.sources[{i}] must be a URL or {{source: URL, weight: w}}, got {src!r}")
        unknown = sorted(set(src) - {"source", "weight", "storage_options"})
        if unknown:
            raise ValueError(f"data.sources[{i}]: unknown keys {unknown}")
        weight = float(src.get("weight", 1.0))
        if weight < 0:
            raise ValueError(f"data.sources[{i}].weight must be >= 0, got {weight}")
        out.append((str(src["source"]), weight, dict(src.get("storage_options") or data.storage_options)))
    if sum(w for _, w, _ in out) <= 0:
        raise ValueError("data.sources: the weights sum to 0")
    return out


def list_sources(data: DataSection) -> list[tuple[str, float, dict, object]]:
    """(url, weight, storage options, its ShardList) of every source; a source with no usable shard raises
    :class:`mvboost.io.reader.ShardDataError` (found by the launcher before Ray starts)."""
    from ..io.reader import list_shards

    return [(url, w, opts, list_shards(url, opts)) for url, w, opts in data_sources(data)]


def training_batches(cfg: TrainConfig, rank: int, world: int, step: int, sources=None):
    """(batches, the mix, the sources): rank ``rank``'s batches from ``step`` on (a resumed run skips the batches it
    already trained on), each source a :class:`ShardStream` (verified against the manifests if ``data.verify``)
    mixed by weight."""
    from .data import MixedStream, ShardStream

    sources = list_sources(cfg.data) if sources is None else sources
    streams = [ShardStream(ls.urls, rank, world, opts, manifests=ls.manifests if cfg.data.verify else None,
                           **({"seed": cfg.train.seed + k, "shuffle_buffer": cfg.data.shuffle_buffer}
                              if cfg.data.shuffle else {}))
               for k, (_, _, opts, ls) in enumerate(sources)]
    mixed = MixedStream(streams, [w for _, w, _, _ in sources], seed=cfg.train.seed * 1000 + rank)
    return mixed.batches(cfg.deepspeed.micro_batch, skip_batches=step * cfg.deepspeed.grad_accum), mixed, sources
