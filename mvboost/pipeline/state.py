"""The driver's job state: output store, plan, resume state, shard tracking and commits, and the one
consumer of result rows used by both executors (in-process and Ray)."""
from __future__ import annotations

import collections
import json
import time

from ..io.files import jsonl_bytes
from ..io.shards import OutputStore, shard_name
from ..stages.base import FAILED, OK, STATUS, JobInfo, status_columns, to_python
from .config import job_meta, validate
from .items import job_plan, plan_items
from .retry import all_shards, effective_rejects, read_rounds, retry_items
from .summary import RunSummary, reason_group, steady_rate
from .units import gpu_shares


def resume_state(store: OutputStore, items: list[dict], repair: bool = True) -> tuple[set[int], set[str], set[str]]:
    """(committed shards, keys staged or rejected in uncommitted shards, every finished key) of an output.
    ``repair``: see :meth:`OutputStore.finished` (False: read only)."""
    committed, staged = store.finished(sorted({it["shard"] for it in items}), repair)
    return committed, staged, staged | {it["item_id"] for it in items if it["shard"] in committed}


class ShardTracker:
    """Counts finished items per shard and says when a shard can be committed."""

    def __init__(self, items: list[dict], done_keys: set[str], committed: set[int]):
        self.keys: dict[int, list[str]] = collections.defaultdict(list)
        for it in items:
            self.keys[it["shard"]].append(it["item_id"])
        self.committed = set(committed)
        self.outstanding = {s: {k for k in ks if k not in done_keys} for s, ks in self.keys.items()
                            if s not in committed}
        self.seconds: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)

    def ready(self) -> list[int]:
        return sorted(s for s, left in self.outstanding.items() if not left and s not in self.committed)

    def mark(self, row: dict) -> int | None:
        s = int(row["shard"])
        for k, v in row.items():
            if k.startswith("t_") and v:
                self.seconds[s][k[2:]] += float(v)
        left = self.outstanding.get(s)
        if left is None:
            return None
        left.discard(row["item_id"])
        return s if not left else None


class JobIncomplete(RuntimeError):
    """Items still failing for infrastructure reasons after ``job.infra_retries`` rounds: nothing of them was
    recorded, their shards are not committed, and the same command retries them."""


class LocalCommitter:
    """Commits shards in this process (the in-process runner): tar, rejects, manifest last."""

    def __init__(self, store: OutputStore):
        self.store = store

    def submit(self, shard: int, keys: list[str], seconds: dict) -> None:
        self.store.commit_shard(shard, keys, seconds)

    def wait(self) -> None:
        return None


class JobState:
    """Everything the driver needs: output store, plan, what is already done, and the tracker."""

    def __init__(self, cfg):
        units = validate(cfg)
        self.cfg = cfg
        self.store = OutputStore(cfg.job.output, cfg.job.storage_options)
        self.store.check_writable()
        self.items = plan_items(cfg)
        self.store.claim_job(job_plan(cfg, self.items))
        self.shards = sorted({it["shard"] for it in self.items})
        committed, staged, done = resume_state(self.store, self.items)
        work = self.items  # what this run is about: the plan, or a retry round of recorded rejects
        if cfg.job.retry_rejected:
            work, line = retry_items(self.store, self.items, cfg.job.retry_rejected, cfg.job.shard_size,
                                     plan_unfinished=bool(set(self.shards) - committed))
            print(line, flush=True)
            committed, staged, done = resume_state(self.store, work)
        self.tracker = ShardTracker(work, staged, committed)
        self.pending = [it for it in work if it["item_id"] not in done]
        self.skipped = len(work) - len(self.pending)
        self.info = JobInfo(cfg.job.output, dict(cfg.job.storage_options), job_meta(cfg, units))
        self.units = [u.bind(self.info) for u in units]  # the job's operators, built once
        self.committer = LocalCommitter(self.store)  # the Ray job swaps in a committer that runs on workers
        self.gpu_seconds_held = 0.0  # set by an executor that can see the GPUs it holds (the Ray job)
        self.t0 = time.time()
        self.arrivals: list[tuple[float, int]] = []  # (time, items) per batch of results
        self.run_rejected = 0
        self.by_id = {it["item_id"]: it for it in work}
        # item_id -> its last infrastructure failure (status row); an item that then finishes leaves it, so after a
        # round it holds exactly the items that failed in that round
        self.failed: dict[str, dict] = {}
        self.infra_failures = 0  # item attempts that failed for infrastructure reasons in this run

    def commit(self, shard: int) -> None:
        """Hand a finished shard to the committer (in this process, or a Ray task where the data is)."""
        self.committer.submit(shard, list(self.tracker.keys[shard]), dict(self.tracker.seconds.get(shard, {})))
        self.tracker.committed.add(shard)

    def commit_ready(self) -> None:
        for s in self.tracker.ready():
            self.commit(s)

    def on_result(self, row: dict) -> int | None:
        if row.get(STATUS) == FAILED:  # not finished: sent through again (take_failed), never recorded
            self.failed[row["item_id"]] = row
            self.infra_failures += 1
            return None
        self.failed.pop(row["item_id"], None)
        if row.get(STATUS) != OK:
            self.run_rejected += 1
        return self.tracker.mark(row)

    def rounds(self):
        """The items of each round of this run: the pending ones, then those whose last attempt failed for
        infrastructure reasons, up to ``job.infra_retries`` more times (said in one line each)."""
        items = self.pending
        for attempt in range(self.cfg.job.infra_retries + 1):
            if not items:
                return
            if attempt:
                print(f"retrying {len(items)} item(s) that failed for infrastructure reasons (round {attempt} of "
                      f"{self.cfg.job.infra_retries})", flush=True)
            yield items
            items = self.take_failed()

    def take_failed(self) -> list[dict]:
        """The planned items whose last attempt failed for infrastructure reasons, for another round."""
        return [self.by_id[k] for k in sorted(self.failed)]

    @property
    def run_seconds(self) -> collections.Counter:
        """Seconds per stage in this run: the sum of the per-shard timings the tracker collects."""
        return sum(self.tracker.seconds.values(), collections.Counter())

    def batch_done(self, n: int) -> None:
        self.arrivals.append((time.time(), n))

    def consume(self, batch: dict, on_row=None, on_commit=None) -> int:
        """Take one batch of results (columns -> sequences) from either executor: keep only the status
        columns, count them, commit every shard they complete. Returns the number of rows finished (an
        infrastructure failure is not finished: it goes through again)."""
        status = status_columns(batch)
        n, finished = len(batch["item_id"]), 0
        for i in range(n):
            row = {c: to_python(v[i]) for c, v in status.items()}
            if on_row is not None:
                on_row(row)
            shard = self.on_result(row)
            finished += row.get(STATUS) != FAILED
            if shard is not None:
                self.commit(shard)
                if on_commit is not None:
                    on_commit()
        self.batch_done(finished)
        return finished

    def incomplete(self) -> JobIncomplete:
        row, attempts = next(iter(self.failed.values())), self.cfg.job.infra_retries + 1
        return JobIncomplete(
            f"{len(self.failed)} item(s) still failed for infrastructure reasons after {attempts} "
            f"attempts (e.g. {row['item_id']} at {row.get('reject_stage')}: {str(row.get('reject_reason'))[:200]}); "
            "nothing of them was recorded and their shards are not committed: run the same command again to "
            "retry them")

    def finish(self) -> RunSummary:
        self.commit_ready()
        self.committer.wait()
        not_done = {s: sorted(left) for s, left in self.tracker.outstanding.items()
                    if left and s not in self.tracker.committed}
        if not not_done:
            self.store.remove_empty_staging()
        if not_done and self.failed:
            raise self.incomplete()
        if not_done:
            s, keys = next(iter(not_done.items()))
            raise RuntimeError(f"{len(not_done)} shard(s) still have unfinished items (e.g. {shard_name(s)}: "
                               f"{keys[:3]}); rerun the job to finish them")
        rounds = read_rounds(self.store)
        rejects = effective_rejects(self.store, self.shards, rounds)  # each key's latest verdict
        run_seconds = self.run_seconds
        share = gpu_shares(self.units)
        busy = sum(v * share.get(k, 0.0) for k, v in run_seconds.items())
        finished = sum(n for _, n in self.arrivals)
        new_accepted = max(0, finished - self.run_rejected)
        by_reason = collections.Counter(f"{r['stage']}: {reason_group(r['reason'])}" for r in rejects)
        now = time.time()
        summary = RunSummary(output=self.cfg.job.output, requested=len(self.items),
                             accepted=len(self.items) - len(rejects), rejected=len(rejects),
                             skipped_already_done=self.skipped, rejected_by_reason=dict(by_reason),
                             stage_seconds={k: round(v, 3) for k, v in run_seconds.items()},
                             shards=all_shards(self.shards, rounds), wall_seconds=round(now - self.t0, 2),
                             steady_items_per_s=steady_rate(self.arrivals, self.t0, now),
                             items_per_s=round(finished / max(1e-9, now - self.t0), 4),
                             gpu_seconds_busy=round(busy, 3), gpu_seconds_held=round(self.gpu_seconds_held, 3),
                             infrastructure_retries=self.infra_failures)
        summary.add_cost(new_accepted, self.cfg.job.gpu_hour_usd)
        self.store.write_atomic(self.store.path("rejects.jsonl"),
                                jsonl_bytes(rejects))
        self.store.write_atomic(self.store.path("summary.json"), json.dumps(summary.to_dict(), indent=1).encode())
        return summary
