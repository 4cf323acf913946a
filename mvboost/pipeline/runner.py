"""The in-process executor: the same stage units, batch by batch, in this process."""
from __future__ import annotations

from .summary import RunSummary
from .state import JobState


def iter_batches(rows: list[dict], size: int):
    for i in range(0, len(rows), size):
        chunk = rows[i:i + size]
        yield {c: [r[c] for r in chunk] for c in chunk[0]}


def run_in_process(cfg, progress: bool | None = None) -> RunSummary:
    """Run the stage list in this process, batch by batch (debugging, tests, the bench baseline)."""
    from tqdm.auto import tqdm

    state = JobState(cfg)
    state.commit_ready()  # shards finished by an earlier run but not committed
    units = state.units
    for u in units:
        u.preflight()
    size = max(1, min(u.resources.batch_size for u in units))
    show = cfg.job.progress if progress is None else progress
    with tqdm(total=len(state.items), initial=state.skipped, desc="items", disable=not show) as bar:
        items = state.pending
        for attempt in range(cfg.job.infra_retries + 1):
            if not items:
                break
            if attempt:
                announce_retry(len(items), attempt, cfg.job.infra_retries)
            for batch in iter_batches(items, size):
                for u in units:
                    batch = u(batch)
                bar.update(state.consume(batch))
            items = state.take_failed()
    return state.finish()


def announce_retry(n: int, attempt: int, rounds: int) -> None:
    print(f"retrying {n} item(s) that failed for infrastructure reasons (round {attempt} of {rounds})", flush=True)
