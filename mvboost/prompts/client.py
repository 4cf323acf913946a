"""An OpenAI-compatible chat client with limits: rate limits (requests and tokens per minute), bounded
concurrency, a per-request deadline, bounded retries (a transient failure is retried with backoff; an
answer that cannot be a chat completion at most once), and a size-capped cache of usable answers.
The API key is read from the environment variable named in the config and never logged or written."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from dataclasses import dataclass

from .config import PromptGenConfig, endpoint
from .filters import validate_item
from .requests import cache_key, parse_items

log = logging.getLogger(__name__)


class BadResponse(RuntimeError):
    """HTTP 200 with a body that is not a chat completion: retried once (a proxy may have hiccuped), then
    the request fails; an endpoint that answers like that answers like that again."""


#: attempts of one request whose answers cannot be chat completions (not JSON, no choices) before it fails
MAX_BAD_RESPONSE_ATTEMPTS = 2


class FatalLLMError(RuntimeError):
    """The endpoint refuses us for good (bad key, unknown model): stop the run with this message."""


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
        last, bad_responses = "", 0
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
                    bad_responses += 1
                    if bad_responses >= MAX_BAD_RESPONSE_ATTEMPTS:  # deterministic: not retried any further
                        return Reply(None, error=f"{last} ({bad_responses} answers that are no chat completion)",
                                     attempts=attempt + 1)
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
