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
import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field

from ..config import ConfigError
from ..io.shards import jsonl_bytes, write_atomic
from .dedupe import DEFAULT_THRESHOLD, Deduper
from .filters import check_prompt, normalise, validate_item
from .offline import SOURCE_NAME as OFFLINE_SOURCE
from .offline import offline_prompts, prompt_id
from .taxonomy import MATERIALS, STYLES, TAXONOMY_VERSION, all_categories

log = logging.getLogger(__name__)

TEMPLATE_VERSION = "v1"
SYSTEM_V1 = (
    "You write prompts for a text-to-image model that renders one isolated object on a white background; "
    "the images become training data for 3D reconstruction. Answer with JSON only, no prose, in the form "
    '{"objects": [{"name": "...", "description": "...", "category": "..."}]}.'
)
USER_V1 = (
    "Request {request_id}. Propose {k} distinct, concrete, physical objects of the category \"{category}\" "
    "(group: {group}). Vary the material (e.g. {materials}), the style (e.g. {styles}), the colour and the era. "
    "Each must be ONE whole object that can stand alone: no scenes, no groups or sets, no people, no text or "
    "brands. \"name\" is a short noun phrase; \"description\" is one visual description of 8 to 30 words that "
    "names the object, its material, colour and style; \"category\" is \"{category}\"."
)


class BadResponse(RuntimeError):
    """HTTP 200 with a body that is not a chat completion (retried like a server error)."""


class FatalLLMError(RuntimeError):
    """The endpoint refuses us for good (bad key, unknown model): stop the run with this message."""


@dataclass
class LLMSection:
    base_url: str | None = None  # None: $OPENAI_BASE_URL; neither set -> offline source
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.9
    max_tokens: int = 2048
    json_mode: bool = True  # response_format={"type": "json_object"}
    stream: bool = False
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    concurrency: int = 8
    requests_per_min: float = 500.0
    tokens_per_min: float = 2_000_000.0
    price_in_per_1m: float = 0.0  # USD per 1M prompt tokens (0: unknown)
    price_out_per_1m: float = 0.0
    # spend bounds: the run stops with its summary written (and resumes) when one is reached
    max_requests: int = 0  # per run, cache hits included; 0 = auto: max(2 parts, 4 x the requests n needs)
    max_total_tokens: int = 0  # prompt + completion tokens paid this run; 0 = off
    max_usd: float = 0.0  # at the price_* settings; 0 = off
    max_consecutive_failures: int = 32  # requests in a row that yield no accepted item
    request_deadline_s: float = 0.0  # whole request incl. a trickling stream; 0 = 2 x timeout_s
    max_response_chars: int = 200_000  # a longer answer is rejected (never parsed, never cached)
    cache_max_mb: float = 256.0  # the response cache stops growing at this size


@dataclass
class PromptGenConfig:
    source: str = "auto"  # auto (llm if an endpoint is configured, else offline), llm, offline
    n: int = 1000
    out: str = "outputs/prompts.jsonl"
    seed: int = 0
    items_per_request: int = 20
    requests_per_part: int = 32
    near_duplicate_threshold: float = DEFAULT_THRESHOLD
    near_duplicates: bool = True  # MiniLM embeddings; exact matching always
    cache_dir: str = "~/.cache/mvboost/llm-cache"
    storage_options: dict = field(default_factory=dict)
    progress: bool = True
    llm: LLMSection = field(default_factory=LLMSection)


# ---- requests ------------------------------------------------------------------------------------
def build_messages(request_id: int, k: int, seed: int = 0) -> list[dict]:
    cats = all_categories()
    group, cat = cats[request_id % len(cats)]
    rng = random.Random(f"{seed}:{request_id}")
    user = USER_V1.format(request_id=request_id, k=k, category=cat, group=group,
                          materials=", ".join(rng.sample(MATERIALS, 3)), styles=", ".join(rng.sample(STYLES, 2)))
    return [{"role": "system", "content": SYSTEM_V1}, {"role": "user", "content": user}]


def request_body(cfg: PromptGenConfig, request_id: int) -> dict:
    body = {"model": cfg.llm.model, "messages": build_messages(request_id, cfg.items_per_request, cfg.seed),
            "temperature": cfg.llm.temperature, "max_tokens": cfg.llm.max_tokens, "seed": cfg.seed + request_id}
    if cfg.llm.json_mode:
        body["response_format"] = {"type": "json_object"}
    return body


def cache_key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class RateLimiter:
    """Token buckets for requests/min and tokens/min (asyncio)."""

    def __init__(self, rpm: float, tpm: float):
        self.rpm, self.tpm = rpm, tpm
        self.req, self.tok = rpm, tpm
        self.t = time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self, tokens: float) -> None:
        tokens = min(tokens, self.tpm)
        async with self.lock:
            while True:
                now = time.monotonic()
                dt, self.t = now - self.t, now
                self.req = min(self.rpm, self.req + dt * self.rpm / 60)
                self.tok = min(self.tpm, self.tok + dt * self.tpm / 60)
                if self.req >= 1 and self.tok >= tokens:
                    self.req -= 1
                    self.tok -= tokens
                    return
                wait = max((1 - self.req) * 60 / self.rpm, (tokens - self.tok) * 60 / self.tpm, 0.001)
                await asyncio.sleep(wait)


@dataclass
class Reply:
    content: str | None  # None: the request failed
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    attempts: int = 0


class LLMClient:
    def __init__(self, cfg: PromptGenConfig):
        try:
            import openai
        except ImportError as e:
            raise ImportError("the LLM prompt source needs openai: pip install 'mvboost[prompts]'") from e
        self.openai = openai
        self.cfg = cfg
        base_url = endpoint(cfg)
        key = os.environ.get(cfg.llm.api_key_env) or "not-needed"
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=cfg.llm.timeout_s)
        self.base_url = base_url
        self.limiter = RateLimiter(cfg.llm.requests_per_min, cfg.llm.tokens_per_min)
        self.sem = asyncio.Semaphore(max(1, cfg.llm.concurrency))
        self.cache_dir = os.path.expanduser(cfg.cache_dir)
        os.makedirs(self.cache_dir, exist_ok=True)
        self.cache_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(self.cache_dir) for f in fs)
        self.cache_full_logged = False

    def _cache_path(self, key: str) -> str:
        return os.path.join(self.cache_dir, key[:2], key + ".json")

    async def complete(self, body: dict) -> Reply:
        key = cache_key(body)
        path = self._cache_path(key)
        if os.path.isfile(path):
            with open(path) as f:
                d = json.load(f)
            return Reply(d["content"], prompt_tokens=d["prompt_tokens"], completion_tokens=d["completion_tokens"],
                         cached=True)
        reply = await self._request(body)
        # cache only usable answers (parseable, the items we asked for) and only up to cache_max_mb
        usable = False
        if reply.content is not None:
            items, err = parse_items(reply.content, self.cfg.items_per_request)
            usable = err is None and any(isinstance(i, dict) and validate_item(i) is None for i in items)
        if usable and self.cache_bytes + len(reply.content) > self.cfg.llm.cache_max_mb * 2 ** 20:
            if not self.cache_full_logged:
                log.warning("LLM response cache at %s reached %.0f MB: new answers are not cached", self.cache_dir,
                            self.cfg.llm.cache_max_mb)
                self.cache_full_logged = True
            usable = False
        if usable:
            self.cache_bytes += len(reply.content) + 100
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}-{random.getrandbits(32):08x}"
            with open(tmp, "w") as f:
                json.dump({"content": reply.content, "prompt_tokens": reply.prompt_tokens,
                           "completion_tokens": reply.completion_tokens}, f)
            os.replace(tmp, path)
        return reply

    async def _request(self, body: dict) -> Reply:
        oa = self.openai
        est = sum(len(m["content"]) for m in body["messages"]) / 4 + body.get("max_tokens", 0)
        last = ""
        for attempt in range(self.cfg.llm.max_retries + 1):
            delay = None
            async with self.sem:
                await self.limiter.acquire(est)
                deadline = self.cfg.llm.request_deadline_s or 2 * self.cfg.llm.timeout_s
                try:
                    content, pt, ct = await asyncio.wait_for(
                        self._stream(body) if self.cfg.llm.stream else self._plain(body), deadline)
                    if len(content) > self.cfg.llm.max_response_chars:
                        return Reply(None, error=f"response too large: {len(content)} characters", attempts=attempt + 1,
                                     prompt_tokens=pt, completion_tokens=ct)
                    return Reply(content, prompt_tokens=pt, completion_tokens=ct, attempts=attempt + 1)
                except asyncio.TimeoutError:
                    last = f"request deadline of {deadline:g} s exceeded"
                except (oa.AuthenticationError, oa.PermissionDeniedError, oa.NotFoundError) as e:
                    raise FatalLLMError(f"the endpoint refused the request ({type(e).__name__}, HTTP "
                                        f"{getattr(e, 'status_code', '?')}): check the model name and the key in "
                                        f"${self.cfg.llm.api_key_env}") from None
                except oa.RateLimitError as e:
                    last, delay = "HTTP 429 rate limited", _retry_after(e)
                except oa.APITimeoutError:
                    last = f"timeout after {self.cfg.llm.timeout_s} s"
                except oa.APIConnectionError as e:
                    last = f"connection error: {type(e).__name__}"
                except oa.APIStatusError as e:
                    if e.status_code < 500:
                        return Reply(None, error=f"HTTP {e.status_code}", attempts=attempt + 1)
                    last, delay = f"HTTP {e.status_code}", _retry_after(e)
                except (BadResponse, ValueError) as e:  # includes bodies the client cannot parse
                    last = f"invalid response: {e}"[:200]
            if attempt < self.cfg.llm.max_retries:
                if delay is None:
                    delay = min(self.cfg.llm.backoff_max_s, self.cfg.llm.backoff_base_s * 2 ** attempt)
                    delay *= 1 + 0.1 * random.random()
                await asyncio.sleep(min(delay, self.cfg.llm.backoff_max_s))
        return Reply(None, error=f"request failed after {self.cfg.llm.max_retries + 1} attempts: {last}",
                     attempts=self.cfg.llm.max_retries + 1)

    async def _plain(self, body):
        r = await self.client.chat.completions.create(**body)
        if not getattr(r, "choices", None) or getattr(r.choices[0], "message", None) is None:
            raise BadResponse("no choices in the completion")
        u = r.usage
        return r.choices[0].message.content or "", getattr(u, "prompt_tokens", 0) or 0, getattr(
            u, "completion_tokens", 0) or 0

    async def _stream(self, body):
        parts, pt, ct = [], 0, 0
        stream = await self.client.chat.completions.create(**body, stream=True,
                                                           stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            if getattr(chunk, "usage", None):
                pt, ct = chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0
        return "".join(parts), pt, ct


def _retry_after(e) -> float | None:
    try:
        v = e.response.headers.get("retry-after")
        return float(v) if v is not None else None
    except (AttributeError, ValueError):
        return None


# ---- parsing and accounting ------------------------------------------------------------------------
def parse_items(content: str, k: int) -> tuple[list, str | None]:
    """The first k proposed items, or ([], reason) when the response is not the JSON we asked for."""
    text = content.strip()
    if text.startswith("```"):
        text = text.strip("`")
        text = text[text.find("{"):] if "{" in text else text
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return [], "malformed response: not JSON"
    objs = data.get("objects") if isinstance(data, dict) else data if isinstance(data, list) else None
    if not isinstance(objs, list):
        return [], "malformed response: no 'objects' list"
    return objs[:k], None


def item_prompt(item: dict) -> str:
    name, desc = item["name"].strip(), item["description"].strip()
    return desc if normalise(name) in normalise(desc) else f"{name}: {desc}"


class BankWriter:
    """Resumable bank under ``out`` (see module doc)."""

    def __init__(self, out: str, storage_options: dict | None = None):
        import fsspec

        self.out = out
        self.fs, self.path = fsspec.core.url_to_fs(out, **(storage_options or {}))
        self.parts = self.path + ".parts"

    def _write(self, path: str, data: bytes) -> None:
        write_atomic(self.fs, path, data)

    def done_parts(self) -> list[int]:
        try:
            names = [p.rsplit("/", 1)[-1] for p in self.fs.ls(self.parts, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(int(n[5:11]) for n in names if n.endswith(".done.json"))

    def load(self, part: int):
        base = f"{self.parts}/part-{part:06d}"
        read = lambda p: [json.loads(x) for x in self.fs.cat(p).decode().splitlines() if x.strip()]  # noqa: E731
        return read(base + ".jsonl"), read(base + ".rejects.jsonl"), json.loads(self.fs.cat(base + ".done.json"))

    def commit(self, part: int, accepted: list, rejects: list, stats: dict) -> None:
        base = f"{self.parts}/part-{part:06d}"
        self._write(base + ".jsonl", jsonl_bytes(accepted))
        self._write(base + ".rejects.jsonl", jsonl_bytes(rejects))
        self._write(base + ".done.json", json.dumps(stats, sort_keys=True).encode())

    def finish(self, accepted: list, rejects: list, summary: dict) -> None:
        self._write(self.path + ".rejects.jsonl", jsonl_bytes(rejects))
        self._write(self.path + ".summary.json", json.dumps(summary, indent=1, sort_keys=True).encode())
        self._write(self.path, jsonl_bytes(accepted))


@dataclass
class BankSummary:
    source: str
    out: str
    requested: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_by_reason: dict = field(default_factory=dict)
    requests: int = 0
    requests_from_cache: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_usd: float | None = None
    duplicates: dict = field(default_factory=dict)
    bank_size: int = 0
    wall_seconds: float = 0.0
    stopped: str = ""  # why the run stopped before n prompts (a spend bound); "" = finished

    def format(self) -> str:
        cost = "unknown (set llm.price_*_per_1m)" if self.estimated_usd is None else f"${self.estimated_usd:.4f}"
        lines = [f"prompt bank at {self.out}: {self.bank_size} prompts, source {self.source}",
                 f"item slots requested {self.requested} = accepted {self.accepted} + rejected {self.rejected}"]
        for r, n in sorted(self.rejected_by_reason.items(), key=lambda x: -x[1]):
            lines.append(f"  rejected {n:>6}  {r}")
        if self.requests:
            lines.append(f"requests {self.requests} ({self.requests_from_cache} from cache), tokens in "
                         f"{self.prompt_tokens} / out {self.completion_tokens}, estimated cost {cost}")
        lines.append(f"duplicates removed: {self.duplicates}; wall time {self.wall_seconds:.1f} s")
        if self.stopped:
            lines.append(f"STOPPED before {self.out} was complete: {self.stopped}. The parts so far are kept: rerun "
                         "(with a higher bound, or once the endpoint is fixed) to resume.")
        return "\n".join(lines)


def _reason_class(reason: str) -> str:
    return reason.split(":")[0] + (": " + reason.split(":")[1].split("(")[0].strip() if ":" in reason else "")


def endpoint(cfg: PromptGenConfig) -> str | None:
    """The endpoint's base URL: ``llm.base_url``, else ``$OPENAI_BASE_URL``, else None."""
    return cfg.llm.base_url or os.environ.get("OPENAI_BASE_URL")


def endpoint_configured(cfg: PromptGenConfig) -> bool:
    return bool(endpoint(cfg))


def check_config(cfg: PromptGenConfig, source: str) -> None:
    """Mistakes that would otherwise surface as a nonsense summary or minutes of failed requests."""
    from urllib.parse import urlparse

    if cfg.n < 1:
        raise ConfigError(f"n must be >= 1, got {cfg.n}")
    base_url = endpoint(cfg)
    if source == "llm" and base_url:
        u = urlparse(base_url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ConfigError(f"llm.base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, "
                              f"got {base_url!r}")


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
    accepted: list[dict] = []
    rejects: list[dict] = []
    done = writer.done_parts()
    next_part = 0
    for p in done:  # resume: earlier parts are final
        if p != next_part:
            break
        acc, rej, stats = writer.load(p)
        accepted += acc
        rejects += rej
        for key in ("requests", "requests_from_cache", "prompt_tokens", "completion_tokens"):
            setattr(s, key, getattr(s, key) + stats.get(key, 0))
        next_part += 1
    dedupe.add_accepted([r["prompt"] for r in accepted])
    k, per_part = cfg.items_per_request, cfg.requests_per_part
    max_requests = cfg.llm.max_requests or max(2 * per_part, 4 * -(-cfg.n // k))
    run_requests, run_tokens, failures_in_a_row = 0, 0, 0
    with tqdm(total=cfg.n, initial=min(len(accepted), cfg.n), desc="prompts", disable=not cfg.progress) as bar:
        while len(accepted) < cfg.n:
            if run_requests + per_part > max_requests:
                s.stopped = (f"request cap: {run_requests} requests this run, llm.max_requests={max_requests} "
                             f"(accepted {len(accepted)} of {cfg.n})")
                break
            first = next_part * per_part
            ids = list(range(first, first + per_part))
            replies = await asyncio.gather(*(client.complete(request_body(cfg, i)) for i in ids))
            part_acc, part_rej = [], []
            stats = {"requests": 0, "requests_from_cache": 0, "prompt_tokens": 0, "completion_tokens": 0}
            for rid, reply in zip(ids, replies):  # in request order: deterministic de-duplication
                stats["requests"] += 1
                accepted_before = len(part_acc)
                stats["requests_from_cache"] += int(reply.cached)
                if not reply.cached:
                    stats["prompt_tokens"] += reply.prompt_tokens
                    stats["completion_tokens"] += reply.completion_tokens
                slots = [None] * k
                if reply.content is None:
                    slot_reasons = [reply.error] * k
                else:
                    items, err = parse_items(reply.content, k)
                    slot_reasons = [err] * k if err else [None] * k
                    if not err:
                        for j in range(k):
                            if j >= len(items):
                                slot_reasons[j] = f"missing: response had {len(items)} of {k} items"
                                continue
                            item = items[j]
                            reason = validate_item(item) if isinstance(item, dict) else "schema: not an object"
                            if reason is None:
                                reason = check_prompt(item_prompt(item))
                            if reason is None:
                                slots[j] = item
                            slot_reasons[j] = reason
                cand = [j for j in range(k) if slots[j] is not None]
                for j, reason in zip(cand, dedupe.add([item_prompt(slots[j]) for j in cand])):
                    slot_reasons[j] = reason
                for j in range(k):
                    if slot_reasons[j] is None:
                        text = item_prompt(slots[j])
                        part_acc.append({"prompt_id": prompt_id(text), "prompt": text, "name": slots[j]["name"],
                                         "description": slots[j]["description"],
                                         "category": slots[j]["category"], "source": source, "request": rid})
                    else:
                        part_rej.append({"request": rid, "slot": j, "reason": slot_reasons[j]})
                failures_in_a_row = 0 if len(part_acc) > accepted_before else failures_in_a_row + 1
            writer.commit(next_part, part_acc, part_rej, stats)
            run_requests += stats["requests"]
            run_tokens += stats["prompt_tokens"] + stats["completion_tokens"]
            for key, v in stats.items():
                setattr(s, key, getattr(s, key) + v)
            accepted += part_acc
            rejects += part_rej
            bar.update(min(cfg.n, len(accepted)) - bar.n)
            next_part += 1
            usd = (s.prompt_tokens * cfg.llm.price_in_per_1m + s.completion_tokens * cfg.llm.price_out_per_1m) / 1e6
            if len(accepted) >= cfg.n:
                break
            if failures_in_a_row >= cfg.llm.max_consecutive_failures:
                s.stopped = (f"{failures_in_a_row} requests in a row yielded no usable prompt "
                             f"(llm.max_consecutive_failures={cfg.llm.max_consecutive_failures}); last reasons: "
                             + "; ".join(sorted({_reason_class(r['reason']) for r in part_rej[-8:]})))
            elif cfg.llm.max_total_tokens and run_tokens >= cfg.llm.max_total_tokens:
                s.stopped = f"token cap: {run_tokens} tokens this run, llm.max_total_tokens={cfg.llm.max_total_tokens}"
            elif cfg.llm.max_usd and usd >= cfg.llm.max_usd:
                s.stopped = f"spend cap: ${usd:.4f}, llm.max_usd={cfg.llm.max_usd}"
            if s.stopped:
                break
    s.requested = next_part * per_part * k
    s.accepted, s.rejected = len(accepted), len(rejects)
    by = {}
    for r in rejects:
        c = _reason_class(r["reason"])
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
    return s
