"""Prompt bank from any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, …).

Request ``i`` asks for ``items_per_request`` objects of taxonomy category ``i mod C`` with attribute hints
derived from ``i`` (deterministic), so a rerun sends byte-identical requests and every response is
served from the on-disk cache: a rerun never pays twice. Each response is parsed as JSON, every
requested item slot is accounted for (accepted, or rejected with a reason: malformed response, schema,
filters, duplicate, failed request), so ``requested = accepted + rejected`` exactly.

Output (``out`` = the bank's URL, e.g. ``s3://b/prompts.jsonl``)::

    <out>                     the bank: JSONL, one prompt per line (prompt_id, prompt, name, category, …)
    <out>.rejects.jsonl       every rejected item slot with its reason
    <out>.summary.json        counts, tokens, estimated $, source
    <out>.parts/part-NNNNNN.{jsonl,rejects.jsonl,done.json}   resumable progress, one part per chunk

A part is committed by its ``done.json`` (written last); a killed run resumes after the last one.
The API key is read from the environment variable named in the config and never logged or written.
"""
from __future__ import annotations

import asyncio
import time

from .bank import BankSummary, BankWriter, reject_group
from .client import FatalLLMError, LLMClient, Reply
from .config import LLMSection, PromptGenConfig, check_config, endpoint, endpoint_configured
from .dedupe import Deduper
from .filters import check_prompt, validate_item
from .offline import SOURCE_NAME as OFFLINE_SOURCE
from .offline import offline_prompts, prompt_id
from .requests import TEMPLATE_VERSION, item_prompt, parse_items, request_body
from .taxonomy import TAXONOMY_VERSION

__all__ = ["FatalLLMError", "LLMSection", "PromptGenConfig", "BankSummary", "generate_bank", "endpoint"]


def generate_bank(cfg: PromptGenConfig, embed=None) -> BankSummary:
    """Write a bank of ``cfg.n`` distinct prompts to ``cfg.out`` (resumable). Returns the summary."""
    source = cfg.source
    if source == "auto":
        source = "llm" if endpoint_configured(cfg) else "offline"
    check_config(cfg, source)
    if source == "offline":
        return _offline_bank(cfg)
    if source != "llm":
        raise ValueError(f"prompts source must be auto, llm or offline, got {cfg.source!r}")
    return asyncio.run(_llm_bank(cfg, embed))


def _offline_bank(cfg) -> BankSummary:
    t0 = time.time()
    rows = offline_prompts(cfg.n, cfg.seed)
    writer = BankWriter(cfg.out, cfg.storage_options)
    s = BankSummary(source=OFFLINE_SOURCE, out=cfg.out, requested=cfg.n, accepted=cfg.n, bank_size=cfg.n)
    s.wall_seconds = round(time.time() - t0, 3)
    writer.finish(rows, [], s.__dict__)
    return s


async def _llm_bank(cfg: PromptGenConfig, embed) -> BankSummary:
    from tqdm.auto import tqdm

    t0 = time.time()
    client = LLMClient(cfg)
    writer = BankWriter(cfg.out, cfg.storage_options)
    if embed is None and cfg.near_duplicates:
        from .dedupe import load_embedder

        embed = load_embedder()
    dedupe = Deduper(cfg.near_duplicate_threshold, embed if cfg.near_duplicates else None)
    source = f"llm:{cfg.llm.model}@{client.base_url or 'api.openai.com'} (templates {TEMPLATE_VERSION}, " \
             f"taxonomy {TAXONOMY_VERSION})"
    s = BankSummary(source=source, out=cfg.out)
    accepted, rejects, next_part = _resume(writer, s)
    dedupe.add_accepted([r["prompt"] for r in accepted])
    per_part = cfg.requests_per_part
    max_requests = cfg.llm.max_requests or max(2 * per_part, 4 * -(-cfg.n // cfg.items_per_request))
    run_requests, run_tokens, failures_in_a_row = 0, 0, 0
    with tqdm(total=cfg.n, initial=min(len(accepted), cfg.n), desc="prompts", disable=not cfg.progress) as bar:
        while len(accepted) < cfg.n:
            if run_requests + per_part > max_requests:
                s.stopped = (f"request cap: {run_requests} requests this run, llm.max_requests={max_requests} "
                             f"(accepted {len(accepted)} of {cfg.n})")
                break
            ids = list(range(next_part * per_part, (next_part + 1) * per_part))
            replies = await asyncio.gather(*(client.complete(request_body(cfg, i)) for i in ids))
            part_acc, part_rej, stats = [], [], {"requests": 0, "requests_from_cache": 0, "prompt_tokens": 0,
                                                 "completion_tokens": 0}
            for rid, reply in zip(ids, replies):  # in request order: deterministic de-duplication
                _count_reply(stats, reply)
                acc, rej = score_reply(reply, rid, cfg.items_per_request, dedupe, source)
                part_acc += acc
                part_rej += rej
                failures_in_a_row = 0 if acc else failures_in_a_row + 1
            writer.commit(next_part, part_acc, part_rej, stats)
            run_requests += stats["requests"]
            run_tokens += stats["prompt_tokens"] + stats["completion_tokens"]
            for key, v in stats.items():
                setattr(s, key, getattr(s, key) + v)
            accepted += part_acc
            rejects += part_rej
            bar.update(min(cfg.n, len(accepted)) - bar.n)
            next_part += 1
            if len(accepted) >= cfg.n:
                break
            s.stopped = _spend_bound(cfg, s, run_tokens, failures_in_a_row, part_rej)
            if s.stopped:
                break
    _finish(cfg, s, writer, accepted, rejects, next_part, t0)
    return s


def _resume(writer: BankWriter, s: BankSummary) -> tuple[list[dict], list[dict], int]:
    """The accepted items, rejects and next part number of the parts an earlier run committed."""
    accepted: list[dict] = []
    rejects: list[dict] = []
    next_part = 0
    for p in writer.done_parts():  # resume: earlier parts are final
        if p != next_part:
            break
        acc, rej, stats = writer.load(p)
        accepted += acc
        rejects += rej
        for key in ("requests", "requests_from_cache", "prompt_tokens", "completion_tokens"):
            setattr(s, key, getattr(s, key) + stats.get(key, 0))
        next_part += 1
    return accepted, rejects, next_part


def _count_reply(stats: dict, reply: Reply) -> None:
    stats["requests"] += 1
    stats["requests_from_cache"] += int(reply.cached)
    if not reply.cached:
        stats["prompt_tokens"] += reply.prompt_tokens
        stats["completion_tokens"] += reply.completion_tokens


def score_reply(reply: Reply, rid: int, k: int, dedupe: Deduper, source: str) -> tuple[list[dict], list[dict]]:
    """One reply's ``k`` item slots -> (accepted prompts, rejected slots with their reason): every slot is
    accounted for (failed request, malformed response, schema, filters, duplicate)."""
    slots: list[dict | None] = [None] * k
    if reply.content is None:
        reasons: list[str | None] = [reply.error] * k
    else:
        items, err = parse_items(reply.content, k)
        reasons = [err] * k if err else [None] * k
        for j in range(k if not err else 0):
            if j >= len(items):
                reasons[j] = f"missing: response had {len(items)} of {k} items"
                continue
            item = items[j]
            reason = validate_item(item) if isinstance(item, dict) else "schema: not an object"
            if reason is None:
                reason = check_prompt(item_prompt(item))
            if reason is None:
                slots[j] = item
            reasons[j] = reason
    cand = [j for j in range(k) if slots[j] is not None]
    for j, reason in zip(cand, dedupe.add([item_prompt(slots[j]) for j in cand])):
        reasons[j] = reason
    accepted, rejected = [], []
    for j in range(k):
        if reasons[j] is None:
            item = slots[j]
            text = item_prompt(item)
            accepted.append({"prompt_id": prompt_id(text), "prompt": text, "name": item["name"],
                             "description": item["description"], "category": item["category"], "source": source,
                             "request": rid})
        else:
            rejected.append({"request": rid, "slot": j, "reason": reasons[j]})
    return accepted, rejected


def _spend_bound(cfg: PromptGenConfig, s: BankSummary, run_tokens: int, failures_in_a_row: int,
                 part_rej: list[dict]) -> str:
    """Why the run must stop now ("" to go on): a bound on failures in a row, tokens or dollars."""
    usd = (s.prompt_tokens * cfg.llm.price_in_per_1m + s.completion_tokens * cfg.llm.price_out_per_1m) / 1e6
    if failures_in_a_row >= cfg.llm.max_consecutive_failures:
        return (f"{failures_in_a_row} requests in a row yielded no usable prompt "
                f"(llm.max_consecutive_failures={cfg.llm.max_consecutive_failures}); last reasons: "
                + "; ".join(sorted({reject_group(r['reason']) for r in part_rej[-8:]})))
    if cfg.llm.max_total_tokens and run_tokens >= cfg.llm.max_total_tokens:
        return f"token cap: {run_tokens} tokens this run, llm.max_total_tokens={cfg.llm.max_total_tokens}"
    if cfg.llm.max_usd and usd >= cfg.llm.max_usd:
        return f"spend cap: ${usd:.4f}, llm.max_usd={cfg.llm.max_usd}"
    return ""


def _finish(cfg: PromptGenConfig, s: BankSummary, writer: BankWriter, accepted: list[dict], rejects: list[dict],
            parts: int, t0: float) -> None:
    """Fill the summary and write the bank, its rejects and the summary."""
    s.requested = parts * cfg.requests_per_part * cfg.items_per_request
    s.accepted, s.rejected = len(accepted), len(rejects)
    by: dict[str, int] = {}
    for r in rejects:
        c = reject_group(r["reason"])
        by[c] = by.get(c, 0) + 1
    s.rejected_by_reason = by
    s.duplicates = {"exact": by.get("duplicate: exact match after normalisation", 0),
                    "near": by.get("duplicate: near-duplicate", 0)}
    if cfg.llm.price_in_per_1m or cfg.llm.price_out_per_1m:
        s.estimated_usd = round(s.prompt_tokens * cfg.llm.price_in_per_1m / 1e6
                                + s.completion_tokens * cfg.llm.price_out_per_1m / 1e6, 6)
    bank = accepted[: cfg.n]
    s.bank_size = len(bank)
    s.wall_seconds = round(time.time() - t0, 2)
    writer.finish(bank, rejects, s.__dict__)
