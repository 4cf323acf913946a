"""Requests to the endpoint and what their answers are parsed into.

Request ``i`` asks for ``items_per_request`` objects of taxonomy category ``i mod C`` with attribute
hints derived from ``i`` (deterministic), so a rerun sends byte-identical requests and every usable
response is served from the client's cache.
"""
from __future__ import annotations

import hashlib
import json
import random

from .config import PromptGenConfig
from .filters import normalise
from .taxonomy import MATERIALS, STYLES, all_categories

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
