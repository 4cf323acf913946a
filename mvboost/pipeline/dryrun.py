"""``--dry-run``: what a run would do, without running a model, starting Ray or writing anything.

Reads the config, builds the item plan, lists what the output already holds (committed shards,
staged items and tombstones: what a rerun skips), checks the plan against the output's job.json,
checks every model reference (``hub.check``: builds nothing) and prints each operator with its
resources and the least the cluster must have for the actor pools to start.
"""
from __future__ import annotations

import json

from ..io.shards import OutputStore
from .config import validate
from .plan import plan_items
from .units import build_units, stage_units


def dry_run(cfg) -> str:
    from ..models.hub import ModelNotFound, check

    validate(cfg)
    store = OutputStore(cfg.job.output, cfg.job.storage_options)
    items = plan_items(cfg)
    shards = sorted({it["shard"] for it in items})
    lines = [f"plan: {len(items):,} items in {len(shards):,} shards of up to {cfg.job.shard_size} "
             f"(prompts: {cfg.prompts.source}{' ' + str(cfg.prompts.bank) if cfg.prompts.source == 'file' else ''})",
             f"output: {store.url}"]
    plan = {"n": cfg.job.n, "shard_size": cfg.job.shard_size, "seed": cfg.job.seed,
            "prompts_source": cfg.prompts.source, "prompts_seed": cfg.prompts.seed,
            "first_key": items[0]["item_id"], "last_key": items[-1]["item_id"]}
    problems = []
    job_json = store.path("job.json")
    if store.exists(job_json):
        old = json.loads(store.read(job_json))
        diff = {k: (old.get(k), v) for k, v in plan.items() if old.get(k) != v}
        if diff:
            problems.append("the output holds a job with a different plan (" + ", ".join(
                f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items()) + "): a run would be refused")
        committed, staged = store.finished(shards)
        done = staged | {it["item_id"] for it in items if it["shard"] in committed}
        lines.append(f"already done: {len(committed):,} shards committed, {len(staged):,} items staged or rejected "
                     f"in uncommitted shards; a run skips {len(done):,} items and processes "
                     f"{len(items) - len(done):,}")
    else:
        lines.append(f"new output: a run processes all {len(items):,} items")
    lines.append("operators (job.stages):")
    units = build_units(cfg, None)
    min_gpu = min_cpu = 0.0
    for names, unit in zip(stage_units(cfg), units):
        r = unit.resources
        if unit.uses_actor:
            pool = f"actor pool {r.min_actors}..{r.max_actors or 'as many as fit'}"
            min_gpu += r.min_actors * r.num_gpus
            min_cpu += r.min_actors * r.num_cpus
        else:
            pool = "tasks"
        extra = "".join(f", {k} {v}" for k, v in (("memory", r.memory), ("accelerator", r.accelerator_type))
                        if v) + ("".join(f", {k} {v:g}" for k, v in r.custom.items()) if r.custom else "")
        lines.append(f"  {unit.name:<28} {pool} x ({r.num_gpus:g} GPU, {r.num_cpus:g} CPU{extra}), "
                     f"batch {r.batch_size}")
        for name in names:
            sc = getattr(cfg, name)
            if getattr(sc, "model", None):
                try:
                    where = check(sc.model, sc.revision, what=name)
                except ModelNotFound as e:
                    where = "MISSING"
                    problems.append(str(e))
                lines.append(f"      {name}: {sc.model}@{sc.revision} -> {where}")
    lines.append(f"the actor pools need at least {min_gpu:g} GPUs and {min_cpu:g} CPUs at once (min_actors), "
                 "plus CPUs for the task stages and the shard commits")
    lines += [f"problem: {p}" for p in problems]
    lines.append("dry run: nothing was run or written" + (f"; {len(problems)} problem(s) above" if problems else ""))
    return "\n".join(lines)
