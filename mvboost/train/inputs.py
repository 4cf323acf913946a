"""The training data, assembled in one place for the loop and for the launcher's check before Ray starts: the
sources (``data.sources`` with weights, or ``data.source``), their committed shards (listed from the manifests),
and the stream of batches a rank reads (seeded shuffling, the weighted mix, resumed at a step)."""
from __future__ import annotations

from .config import DataSection, TrainConfig, data_sources


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
                           target=cfg.data.target,
                           **({"seed": cfg.train.seed + k, "shuffle_buffer": cfg.data.shuffle_buffer}
                              if cfg.data.shuffle else {}))
               for k, (_, _, opts, ls) in enumerate(sources)]
    mixed = MixedStream(streams, [w for _, w, _, _ in sources], seed=cfg.train.seed * 1000 + rank)
    return mixed.batches(cfg.deepspeed.micro_batch, skip_batches=step * cfg.deepspeed.grad_accum), mixed, sources
