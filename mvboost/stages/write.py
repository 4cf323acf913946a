"""The last stage: encode a finished item into its sample members and stage it at the output.

See :mod:`mvboost.io.sample` for the members and their encodings. Rejected items are staged as
tombstones (key, stage, reason) so reruns skip them too. This stage is where payloads stop: it
returns only the status columns (:data:`~mvboost.stages.base.RESULT_COLUMNS` and the ``t_*``
timings), so the blocks that reach the driver carry a few hundred bytes per item whatever the
samples weigh.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..io.sample import encode_sample
from ..io.shards import OutputStore
from .base import REJECTED, STATUS, Resources, Stage, status_columns


@dataclass
class WriteConfig:
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1.0, batch_size=8, retries=3))


class WriteStage(Stage):
    name = "write"
    Config = WriteConfig
    inputs = ("item_id", "shard", "prompt")
    outputs = ("staged_bytes",)
    uses_actor = False
    infra_errors = (OSError,)  # the output store failed, not the item: it goes through again

    def setup(self):
        self.store = OutputStore(self.job.output, self.job.storage_options)

    def __call__(self, batch):
        """Stages accepted items and the tombstones of rejected ones; returns the status columns only."""
        self.ensure_setup()
        out = super().__call__(batch)
        for i, status in enumerate(out[STATUS]):
            if status == REJECTED:
                self.store.stage_reject(int(out["shard"][i]), out["item_id"][i], out["reject_stage"][i],
                                        out["reject_reason"][i])
        return status_columns(out)

    def process(self, rows):
        res = []
        for r in rows:
            n = self.store.stage_sample(int(r["shard"]), r["item_id"], encode_sample(r, self.job.meta))
            res.append({"staged_bytes": n})
        return res


__all__ = ["WriteStage", "WriteConfig"]
