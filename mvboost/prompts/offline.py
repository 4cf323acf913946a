"""Deterministic offline prompt source: composes distinct object prompts from the taxonomy.

Used when no LLM endpoint is configured, so the main job runs with no network. Prompt ``i`` is a
bijective function of ``(seed, i)`` over the product of category x material x colour x style x era,
so the first N prompts are distinct by construction (and the bank is reproducible).
"""
from __future__ import annotations

import hashlib
import math

from .taxonomy import COLOURS, ERAS, MATERIALS, STYLES, TAXONOMY_VERSION, all_categories

SOURCE_NAME = f"offline-taxonomy-{TAXONOMY_VERSION}"


def normalise(text: str) -> str:
    return " ".join(text.lower().replace(",", " ").split())


def prompt_id(text: str) -> str:
    """Stable, dot-free id of a prompt (12 hex digits of the SHA-1 of its normalised text)."""
    return hashlib.sha1(normalise(text).encode()).hexdigest()[:12]


def _permute(i: int, n: int, seed: int) -> int:
    """A bijection of range(n): an affine map with a multiplier coprime to n."""
    a = 1 + 2 * ((seed * 2654435761 + 40503) % (n // 2 or 1))
    while math.gcd(a, n) != 1:
        a += 2
    return (a * i + seed * 97 + 13) % n


def compose(i: int, seed: int = 0) -> dict:
    cats = all_categories()
    radices = (len(cats), len(MATERIALS), len(COLOURS), len(STYLES), len(ERAS))
    total = math.prod(radices)
    if i >= total:
        raise ValueError(f"the offline taxonomy has {total} distinct prompts; asked for index {i}")
    k = _permute(i, total, seed)
    digits = []
    for r in radices:
        digits.append(k % r)
        k //= r
    (group, cat), mat, col, sty, era = (cats[digits[0]], MATERIALS[digits[1]], COLOURS[digits[2]],
                                       STYLES[digits[3]], ERAS[digits[4]])
    text = f"a {col} {mat} {cat}, {sty} style, {era}"
    return {"prompt_id": prompt_id(text), "prompt": text, "category": cat, "group": group,
            "description": f"{sty} {era} {cat} made of {mat}, {col}", "source": SOURCE_NAME}


def offline_prompts(n: int, seed: int = 0) -> list[dict]:
    out, seen = [], set()
    i = 0
    while len(out) < n:
        p = compose(i, seed)
        i += 1
        if p["prompt_id"] in seen:  # cannot happen for a bijection; guards the id hash
            continue
        seen.add(p["prompt_id"])
        out.append(p)
    return out
