"""The deterministic item plan: prompts -> items (key, shard, seed)."""
from __future__ import annotations

import hashlib
import json

from ..config import ConfigError
from .stage import OK, STATUS


def item_seed(job_seed: int, prompt_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{job_seed}:{prompt_id}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def load_prompts(cfg) -> list[dict]:
    if cfg.prompts.source == "offline":
        from ..prompts.offline import offline_prompts

        return offline_prompts(cfg.job.n, cfg.prompts.seed)
    import fsspec

    with fsspec.open(cfg.prompts.bank, "rt") as f:
        bank = [json.loads(line) for line in f if line.strip()]
    if len(bank) < cfg.job.n:
        raise ConfigError(f"prompt bank {cfg.prompts.bank} has {len(bank)} prompts, job.n is {cfg.job.n}")
    return bank[: cfg.job.n]


def plan_items(cfg) -> list[dict]:
    """The deterministic item plan: item i -> key (from the prompt id), shard i // shard_size, seed."""
    prompts = load_prompts(cfg)
    items, seen = [], set()
    for i, p in enumerate(prompts):
        key = "p" + str(p["prompt_id"]).replace(".", "_")
        if key in seen:
            raise ConfigError(f"prompt bank has a duplicate prompt id {p['prompt_id']!r}")
        seen.add(key)
        items.append({"item_id": key, "prompt_id": p["prompt_id"], "index": i, "shard": i // cfg.job.shard_size,
                      "prompt": p["prompt"], "category": p.get("category", ""),
                      "prompt_source": p.get("source", cfg.prompts.source),
                      "seed": item_seed(cfg.job.seed, p["prompt_id"]), STATUS: OK, "reject_stage": "",
                      "reject_reason": ""})
    return items




def job_plan(cfg, items: list[dict]) -> dict:
    """What job.json pins: a rerun on the same output must have the same plan."""
    return {"n": cfg.job.n, "shard_size": cfg.job.shard_size, "seed": cfg.job.seed,
            "prompts_source": cfg.prompts.source, "prompts_seed": cfg.prompts.seed,
            "first_key": items[0]["item_id"], "last_key": items[-1]["item_id"]}
