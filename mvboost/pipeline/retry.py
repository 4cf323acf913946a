"""Retrying recorded rejects on the same output (``--retry-rejected [GROUP]``), exactly once.

A committed shard is never rewritten. A retry round writes shards of its own, numbered after every shard the
output holds:

1. its plan, ``retries/round-NNNN.json`` (the group asked for, each retried key -> its new shard), is written
   first, atomically;
2. the retried items run through the job's stages and are committed like any shard (staged items, tar,
   rejects, manifest last, then the rename);
3. a run of the same command that finds the newest round with shards still uncommitted finishes that round
   instead of planning a new one, so a kill -9 at any point loses nothing and commits nothing twice.

An item's latest verdict counts: a key accepted or rejected again in a retry shard supersedes its reject in an
earlier shard (:func:`effective_rejects`, what ``rejects.jsonl`` and the summary report).

A GROUP selects rejects by ``"<stage>: <reason group>"`` as the summary prints it (``"matting: object too
small"``), by the stage alone (``matting``) or by the reason group alone (``object too small``); none or
``all``: every recorded reject.
"""
from __future__ import annotations

import json
import time

from ..config import ConfigError
from ..io.shards import OutputStore, shard_name
from .summary import reason_group

RETRY_DIR = "retries"
ALL = "all"


def reject_key(rec: dict) -> str:
    """A reject's ``"<stage>: <reason group>"``, as the summary counts it."""
    return f"{rec['stage']}: {reason_group(rec['reason'])}"


def selected(rec: dict, group: str) -> bool:
    return group == ALL or group in (reject_key(rec), rec["stage"], reason_group(rec["reason"]))


def read_rounds(store: OutputStore) -> list[dict]:
    """Every retry round's plan on the output, oldest first."""
    names = sorted(p.rsplit("/", 1)[-1] for p in store._ls(store.path(RETRY_DIR)))  # noqa: SLF001
    return [json.loads(store.read(store.path(RETRY_DIR, n))) for n in names
            if n.startswith("round-") and n.endswith(".json")]


def all_shards(plan_shards: list[int], rounds: list[dict]) -> list[int]:
    """The plan's shards, then every retry round's, in the order their verdicts apply."""
    return list(plan_shards) + [s for r in rounds for s in r["shards"]]


def effective_rejects(store: OutputStore, plan_shards: list[int], rounds: list[dict] | None = None) -> list[dict]:
    """The rejects that stand: each rejected key's latest verdict, later shards superseding earlier ones."""
    rounds = read_rounds(store) if rounds is None else rounds
    verdict: dict[str, dict] = {}
    retry_shards = {s for r in rounds for s in r["shards"]}
    for s in all_shards(plan_shards, rounds):
        if s in retry_shards:
            manifest = store.read_manifest(s)
            for key in manifest.keys if manifest else []:
                verdict.pop(key, None)  # accepted on retry
        for rec in store.all_rejects([s]):
            verdict.pop(rec["key"], None)
            verdict[rec["key"]] = rec
    return list(verdict.values())


def round_finished(store: OutputStore, rnd: dict) -> bool:
    return all(store.read_manifest(s) is not None for s in rnd["shards"])


def retry_items(store: OutputStore, items: list[dict], group: str, shard_size: int,
                plan_unfinished: bool) -> tuple[list[dict], str]:
    """The items of the retry round to run (each planned item with its retry shard), and one line saying what
    the round is. The newest round, if some of its shards are uncommitted, is finished first."""
    rounds = read_rounds(store)
    if rounds and not round_finished(store, rounds[-1]):
        rnd = rounds[-1]
        line = (f"retry round {rnd['round']} (rejects of {rnd['group']!r}) was interrupted: finishing it "
                f"({len(rnd['items'])} item(s), shards {shard_name(rnd['shards'][0])} … "
                f"{shard_name(rnd['shards'][-1])})")
    else:
        if plan_unfinished:
            raise ConfigError("--retry-rejected: the job has unfinished items; run it without --retry-rejected first")
        plan_shards = sorted({it["shard"] for it in items})
        standing = effective_rejects(store, plan_shards, rounds)
        chosen = [rec for rec in standing if selected(rec, group)]
        if not chosen:
            groups = sorted({reject_key(r) for r in standing})
            return [], (f"--retry-rejected {group}: no recorded reject matches"
                        + (f" (recorded: {'; '.join(groups)})" if groups else " (the output has none)"))
        order = {it["item_id"]: i for i, it in enumerate(items)}
        keys = sorted((rec["key"] for rec in chosen), key=lambda k: order[k])
        first = max(all_shards(plan_shards, rounds)) + 1
        assign = {k: first + i // shard_size for i, k in enumerate(keys)}
        rnd = {"round": len(rounds) + 1, "group": group, "items": assign,
               "shards": sorted(set(assign.values())), "created": time.time()}
        store.write_atomic(store.path(RETRY_DIR, f"round-{rnd['round']:04d}.json"),
                           json.dumps(rnd, indent=1).encode())
        line = (f"retry round {rnd['round']}: {len(keys)} recorded reject(s) of {group!r} go through again into "
                f"shards {shard_name(rnd['shards'][0])} … {shard_name(rnd['shards'][-1])}")
    by_id = {it["item_id"]: it for it in items}
    return [dict(by_id[k], shard=s) for k, s in rnd["items"].items()], line
