"""The prompt-bank configuration (``prompts/configs/*.yaml``): the bank, the endpoint and its limits."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..config import ConfigError
from .dedupe import DEFAULT_THRESHOLD


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
