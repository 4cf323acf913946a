"""The run summary (counts, reasons, seconds, GPU-seconds and $, throughput)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..io.shards import shard_name


@dataclass
class RunSummary:
    output: str
    requested: int
    accepted: int
    rejected: int
    skipped_already_done: int
    rejected_by_reason: dict
    stage_seconds: dict
    shards: list
    wall_seconds: float
    steady_items_per_s: float | None = None  # after the first results (start-up excluded); None: not measurable
    items_per_s: float = 0.0  # items finished this run / wall time (start-up included)
    gpu_seconds_busy: float = 0.0  # stage seconds x the GPUs each stage's worker holds, this run
    gpu_seconds_held: float = 0.0  # GPUs handed to workers x time, busy or idle (what is paid; Ray job only)
    gpu_seconds_per_accepted: float = 0.0  # held where known, else busy
    usd: float | None = None  # this run's GPU-seconds (held, else busy) at job.gpu_hour_usd
    usd_per_accepted: float | None = None
    infrastructure_retries: int = 0  # item attempts that failed for infrastructure reasons and went through again

    def add_cost(self, new_accepted: int, gpu_hour_usd: float) -> None:
        paid = self.gpu_seconds_held or self.gpu_seconds_busy
        if paid and gpu_hour_usd:
            self.usd = round(paid * gpu_hour_usd / 3600, 4)
        if new_accepted and paid:
            self.gpu_seconds_per_accepted = round(paid / new_accepted, 4)
            if gpu_hour_usd:
                self.usd_per_accepted = round(self.gpu_seconds_per_accepted * gpu_hour_usd / 3600, 6)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def format(self) -> str:
        lines = [f"shards at {self.output} ({len(self.shards)} committed: "
                 f"{shard_name(self.shards[0]) if self.shards else '-'} … "
                 f"{shard_name(self.shards[-1]) if self.shards else '-'})",
                 f"requested {self.requested}: accepted {self.accepted}, rejected {self.rejected}"
                 f" ({self.skipped_already_done} were already finished before this run)"]
        for reason, n in sorted(self.rejected_by_reason.items(), key=lambda x: -x[1]):
            lines.append(f"  rejected {n:>5}  {reason}")
        if self.infrastructure_retries:
            lines.append(f"infrastructure failures retried (never recorded as rejects): {self.infrastructure_retries}")
        if self.stage_seconds:
            lines.append("seconds per stage (this run, summed over items): " + ", ".join(
                f"{k} {v:.2f}" for k, v in self.stage_seconds.items()))
        if self.gpu_seconds_busy or self.gpu_seconds_held:
            cost = (f"; ${self.usd:.4f} in all, ${self.usd_per_accepted:.5f} per accepted sample"
                    if self.usd_per_accepted is not None else "")
            held = f"held {self.gpu_seconds_held:.1f}, " if self.gpu_seconds_held else ""
            lines.append(f"GPU-seconds {held}busy {self.gpu_seconds_busy:.1f} ({self.gpu_seconds_per_accepted:.2f} "
                         f"{'held' if self.gpu_seconds_held else 'busy'} per accepted sample{cost})")
        steady = (f"{self.steady_items_per_s:.3f} items/s" if self.steady_items_per_s is not None
                  else "n/a (results came in too few bursts to measure)")
        lines.append(f"wall time {self.wall_seconds:.1f} s; end to end {self.items_per_s:.3f} items/s; "
                     f"steady throughput {steady}")
        return "\n".join(lines)


def steady_rate(arrivals: list[tuple[float, int]], t0: float, t_end: float, min_batches: int = 3,
                min_span: float = 0.25) -> float | None:
    """Items/s once results flow: the items after the first batch of results over the time from the first
    to the last batch. Only when there are ``min_batches`` batches spread over at least ``min_span`` of
    the run; results that arrive in a burst (a short run, a pipeline that holds its output) give None
    rather than a rate divided by a few milliseconds."""
    if len(arrivals) < min_batches:
        return None
    span = arrivals[-1][0] - arrivals[0][0]
    if span <= 0 or span < min_span * max(1e-9, t_end - t0):
        return None
    return round(sum(n for _, n in arrivals[1:]) / span, 4)


def reason_group(reason: str) -> str:
    """A reject reason's group, for counting rejects by reason in the summary and the metrics: the text
    before the first colon or parenthesis ("object too small: 0.3% …" -> "object too small")."""
    return reason.split(":")[0].split("(")[0].strip()
