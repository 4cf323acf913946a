"""The in-process executor: the same stage units, batch by batch, in this process."""
from __future__ import annotations

from .state import JobState
from .summary import RunSummary


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
        for items in state.rounds():
            for batch in iter_batches(items, size):
                for u in units:
                    batch = u(batch)
                bar.update(state.consume(batch))
    return state.finish()
