"""``--dry-run``: what a run would do, without running a model, starting Ray or writing anything.

Reads the config, builds the item plan, lists what the output already holds (committed shards,
staged items and tombstones: what a rerun skips; shards a killed run left between manifest and
rename are reported, not published), checks the plan against the output's job.json, checks every
model reference (``hub.check``: builds nothing) and prints each operator with its resources and the
least the cluster must have for the actor pools to start. A file bank's near-duplicate verdicts are
read from their cache when an earlier run wrote them; otherwise they are reported as not checked
(the dry run loads no MiniLM). Nothing is written: not the output, not a cache.
"""
from __future__ import annotations

from ..io.shards import OutputStore
from .config import validate
from .items import job_plan, plan_items
from .layout import fmt_resource, min_demand
from .state import resume_state
from .units import layout_units


def source_detail(cfg) -> str:
    where = {"file": cfg.prompts.bank, "assets": cfg.prompts.assets, "images": cfg.prompts.images}
    return f" {where[cfg.prompts.source]}" if where.get(cfg.prompts.source) else ""


def dry_run(cfg) -> tuple[str, list[str]]:
    """(the plan as text, the problems a run would hit: an other plan on the output, missing models)."""
    from ..models.hub import ModelNotFound, check

    units = validate(cfg)
    store = OutputStore(cfg.job.output, cfg.job.storage_options)
    items = plan_items(cfg, dry_run=True)
    shards = sorted({it["shard"] for it in items})
    lines = [f"plan: {len(items):,} items in {len(shards):,} shards of up to {cfg.job.shard_size} "
             f"(prompts: {cfg.prompts.source}{source_detail(cfg)})",
             f"output: {store.url}"]
    problems = []
    if store.exists(store.path("job.json")):
        mismatch = store.plan_mismatch(job_plan(cfg, items))
        if mismatch:
            problems.append(f"the output holds a job with a different plan ({mismatch}): a run would be refused")
        committed, staged, done = resume_state(store, items, repair=False)
        lines.append(f"already done: {len(committed):,} shards committed, {len(staged):,} items staged or rejected "
                     f"in uncommitted shards; a run skips {len(done):,} items and processes "
                     f"{len(items) - len(done):,}")
        unpublished = store.unpublished(sorted(committed))
        if unpublished:
            lines.append(f"{len(unpublished)} committed shard(s) still under their temporary name (a run was killed "
                         f"between manifest and rename, e.g. shard {unpublished[0]}): a run publishes them first")
    else:
        lines.append(f"new output: a run processes all {len(items):,} items")
    unchecked = sum(1 for it in items if it.get("near_duplicates_unchecked"))
    if unchecked:
        lines.append(f"near-duplicates: not checked for {unchecked:,} bank rows (no cached verdicts for this bank; "
                     "a run embeds them with MiniLM once and caches the verdicts; the dry run loads no model)")
    lines.append("operators (job.stages):")
    layout = layout_units(units)
    for unit, lu in zip(units, layout):
        r = unit.resources
        pool = f"actor pool {r.min_actors}..{r.max_actors or 'as many as fit'}" if unit.uses_actor else "tasks"
        extra = "".join(f", {fmt_resource(k, v)}" for k, v in lu.other.items())
        lines.append(f"  {unit.name:<28} {pool} x ({r.num_gpus:g} GPU, {r.num_cpus:g} CPU{extra}), "
                     f"batch {r.batch_size}")
        for ref in unit.model_refs:
            try:
                where = check(ref.id, ref.revision, what=ref.stage)
            except ModelNotFound as e:
                where = "MISSING"
                problems.append(str(e))
            lines.append(f"      {ref.stage}: {ref.id}@{ref.revision} -> {where}")
    need = min_demand(layout)
    others = "".join(f", {fmt_resource(k, v)}" for k, v in need.items() if k not in ("GPU", "CPU"))
    lines.append(f"the actor pools need at least {need['GPU']:g} GPUs and {need['CPU']:g} CPUs{others} at once "
                 "(min_actors), plus CPUs for the task stages and the shard commits")
    lines += [f"problem: {p}" for p in problems]
    lines.append("dry run: nothing was run or written" + (f"; {len(problems)} problem(s) above" if problems else ""))
    return "\n".join(lines), problems
