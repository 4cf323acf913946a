"""A load-test stage with no model: a payload of ``bytes`` random bytes per item after ``seconds`` of
simulated work, optionally rejecting every ``reject_every``-th item. ``job.stages: [synthetic, write]``
exercises the driver, the object store, the shard commits and the storage at any scale without GPUs
(the scale-out tests and ``bench/bench_scale.py`` use it). The payload becomes ``payload.bin``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .base import Reject, Resources, Stage


@dataclass
class SyntheticConfig:
    bytes: int = 1_000_000  # payload per item
    seconds: float = 0.0  # simulated work per item
    reject_every: int = 0  # reject items whose plan index % reject_every == reject_every - 1 (0: never)
    # run as an actor pool, as the GPU stages do; as tasks, a stage holding GPUs gets a new worker process per
    # batch (Ray does not reuse a GPU task's worker), which no production GPU stage pays
    actor: bool = False
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1.0, batch_size=8))


class SyntheticStage(Stage):
    name = "synthetic"
    Config = SyntheticConfig
    inputs = ("item_id", "seed", "index")
    outputs = ("payload",)

    @property
    def uses_actor(self) -> bool:  # type: ignore[override]
        return bool(self.config.actor)

    def process(self, rows):
        c = self.config
        out = []
        for r in rows:
            if c.seconds:
                time.sleep(c.seconds)
            if c.reject_every and int(r["index"]) % c.reject_every == c.reject_every - 1:
                out.append(Reject(f"synthetic rejection (every {c.reject_every}th item)"))
                continue
            out.append({"payload": np.random.default_rng(int(r["seed"])).bytes(max(0, c.bytes))})
        return out
